"""Command line: ``python -m detox_utils batch --profile NAME --out DIR [--jobs N] [--scheduler ADDR]
[--device DEV] [--dry-run]`` and ``python -m detox_utils cache [--clear KIND]``."""
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
    args = parser.parse_args(argv)
    if args.command == "cache":
        return _cache(args.clear)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

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
