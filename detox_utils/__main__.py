"""Command line: ``python -m detox_utils batch --profile NAME --out DIR [--jobs N] [--scheduler ADDR]
[--device DEV] [--dry-run]``, ``python -m detox_utils verify --out DIR [--runs HASH ...] [--n N]`` and
``python -m detox_utils cache [--clear KIND]``."""
from __future__ import annotations

import argparse
import logging
import sys

from . import batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="run an experiment grid (a profile) with papermill")
    b.add_argument("--profile", required=True, help="profile name in the profiles file")
    b.add_argument("--out", required=True, help="folder for result files and executed notebooks")
    b.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine (default 1)")
    b.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:port); default: run locally")
    b.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    b.add_argument("--profiles", default=None, help="profiles YAML (default: the packaged one)")
    b.add_argument("--timeout", type=int, default=None, help="seconds per notebook cell")
    b.add_argument("--device", default="auto",
                   help="torch device for every run: auto (a CUDA GPU when there is one; default), cpu, "
                        "cuda, cuda:N, mps")
    c = sub.add_parser("cache", help="show the size of each cache folder, or clear one")
    c.add_argument("--clear", metavar="KIND", default=None,
                   help="delete one cache: models, activations, gradient_scores, interventions, or all")
    v = sub.add_parser("verify", help="rerun published runs and compare them with the stored results")
    v.add_argument("--out", required=True, help="result folder to check, e.g. results/default")
    v.add_argument("--runs", nargs="+", default=None, metavar="HASH",
                   help="config hashes to rerun (default: the --n cheapest runs)")
    v.add_argument("--n", type=int, default=1, help="how many of the cheapest runs to rerun (default 1)")
    v.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance for metrics")
    v.add_argument("--workdir", default=None, help="keep the reruns here (default: a temporary folder)")
    v.add_argument("--device", default="auto", help="torch device, as for batch")
    args = parser.parse_args(argv)
    if args.command == "cache":
        return _cache(args.clear)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "verify":
        return _verify(args)

    try:
        summaries = batch.run_batch(args.profile, args.out, jobs=args.jobs,
                                    scheduler=args.scheduler, dry_run=args.dry_run,
                                    profiles_path=args.profiles, timeout=args.timeout,
                                    device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in summaries:
        print(f"{s['status']:8s} {s['config_hash']}  {s.get('label', '')}  {s['seconds']:.1f}s")
    failed = sum(s["status"] == "failed" for s in summaries)
    print(f"{len(summaries)} runs: " + ", ".join(
        f"{n} {st}" for st in ("planned", "done", "skipped", "ok", "failed")
        if (n := sum(s["status"] == st for s in summaries))))
    return 1 if failed else 0


def _verify(args: argparse.Namespace) -> int:
    from . import verify

    try:
        checks = verify.verify(args.out, args.runs, args.n, atol=args.atol, workdir=args.workdir,
                               device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for c in checks:
        print(f"{c.status:10s} {c.config_hash}  {c.label}  {c.n_metrics} metrics, {c.n_samples} samples, "
              f"max |diff| {c.max_abs_diff:.3g}, {c.seconds:.0f}s")
        for line in c.differences:
            print(f"           {line}")
    n_ok = sum(c.status == "reproduced" for c in checks)
    print(f"{n_ok} of {len(checks)} runs reproduced")
    return 0 if n_ok == len(checks) else 1


def _cache(clear: str | None) -> int:
    from . import _io

    if clear is not None:
        try:
            freed = _io.clear_cache(clear)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"cleared {clear}: {freed / 2**20:.1f} MiB freed")
        return 0
    print(f"cache folder: {_io.cache_root()} (${_io.CACHE_ENV})")
    for kind, (n, size) in _io.cache_usage().items():
        print(f"{kind:16s} {n:5d} entries {size / 2**20:10.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
