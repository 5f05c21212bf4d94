"""Command line: ``python -m detox_utils batch --profile NAME --out DIR [--jobs N] [--scheduler ADDR]
[--device DEV] [--dry-run]``, ``python -m detox_utils verify --out DIR [--runs HASH ...] [--n N]``,
``python -m detox_utils cache [--clear KIND]``, ``python -m detox_utils export --model M --method NAME
--out DIR [--param k=v ...]`` (an edited model as a plain transformers folder), ``python -m detox_utils
explore --model M [--n-contrast N] [--out DIR]`` (the neuron explorer's record of a model), ``python -m
detox_utils localize [--models M ...] [--out DIR]`` (the localization notebook on each packaged model
whose result is missing) and ``python -m detox_utils run NOTEBOOK OUTPUT -p NAME VALUE ...``
(papermill, refusing parameters the notebook does not declare).

The maintainer tools are subcommands too, each with its own options (``python -m detox_utils TOOL
--help``): ``book`` (`detox_utils.report.build`: ``book build [--results DIR]``, ``book retitle``),
``curate`` (`detox_utils.curate`), ``validate-evaluators`` (`detox_utils.validate_evaluators`),
``screenshots`` (`detox_utils.screenshots`) and ``findings`` (`detox_utils.report.findings`: the
README's findings block); ``python -m <module>`` runs each of them as well.

A user error (a bad profile, option, folder or file) ends with exit status 2 and one line on stderr
saying what is wrong and what is allowed, never a traceback."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from . import batch

# What a user can cause and fix (a bad profile, folder, file or option): one line and exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


# maintainer tools: subcommand -> (module whose main(argv) runs it, what it does)
TOOLS = {
    "book": ("detox_utils.report.build", "build the book strictly (book build [--results DIR]), or give an "
                                          "executed notebook its page title (book retitle)"),
    "curate": ("detox_utils.curate.files", "rebuild the curated data files from the package archives"),
    "validate-evaluators": ("detox_utils.validate_evaluators",
                            "validate the evaluators on the labelled insults (writes results/evaluators)"),
    "screenshots": ("detox_utils.screenshots", "headless-Chromium screenshots of the built book's pages"),
    "ppl-prefix": ("detox_utils.ppl_prefix", "measure a model's edits again under another perplexity prefix "
                                             "(writes <out>/ppl-prefix/<model>.json)"),
    "findings": ("detox_utils.report.findings", "write the README's findings block from the committed results "
                                                "(--check: compare only)"),
}


def _tool(name: str, argv: list[str]) -> int:
    import importlib

    code = importlib.import_module(TOOLS[name][0]).main(argv)
    return int(code or 0)


def _user_error(exc: BaseException) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


def _user_errors_exit_2(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand's handler whose `USER_ERRORS` end as one stderr line and exit status 2."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except USER_ERRORS as exc:
            return _user_error(exc)
    return wrapped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:  # the tool parses its own options
        return _tool(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="python -m detox_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, what) in TOOLS.items():
        sub.add_parser(name, help=f"{what} (options: python -m detox_utils {name} --help)", add_help=False)
    b = sub.add_parser("batch", help="run an experiment grid (a profile) with papermill")
    b.add_argument("--profile", required=True, help="profile name in the profiles file")
    b.add_argument("--out", required=True, help="folder for result files and executed notebooks")
    b.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine (default 1)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per run (default: cores // jobs with --jobs > 1, else torch's "
                        "default; 0: torch's default)")
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
    r = sub.add_parser("run", help="execute a notebook with papermill, refusing parameters it does not "
                                   "declare in its parameters cell (papermill itself only warns)")
    r.add_argument("notebook", help="the notebook, e.g. notebooks/evaluate.ipynb")
    r.add_argument("output", help="where to write the executed notebook")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a parameter; VALUE is read as papermill -p reads it (int, float, True/False/None, "
                        "else a string)")
    r.add_argument("-y", "--yaml", action="append", default=[], metavar="YAML",
                   help="parameters as a YAML mapping, e.g. -y 'method_params: {k: 3}'")
    r.add_argument("--cwd", default=None, help="working folder of the kernel (default: the notebook's)")
    e = sub.add_parser("export", help="write a model with a method folded into its weights as a plain "
                                      "transformers folder, with a model card")
    e.add_argument("--model", required=True, help="packaged model name, hub id or local folder")
    e.add_argument("--method", required=True, help="aura, det0, damp, meow2x or trne")
    e.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, e.g. --param k=3000 --param alpha=0.5 (YAML values)")
    e.add_argument("--n-contrast", type=int, default=400, help="contrast texts per class for the fit")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, help="folder to write (replaced when it exists)")
    e.add_argument("--results", default=None,
                   help="grid folder whose runs of this model and setting go on the card's 'Measured'")
    e.add_argument("--device", default="cpu", help="torch device for the fit (default cpu)")
    x = sub.add_parser("explore", help="the neuron explorer: a model's most toxicity-selective MLP units, "
                                       "their top contrast texts and the tokens they promote")
    x.add_argument("--model", required=True, help="packaged model name, hub id or local folder")
    x.add_argument("--n-contrast", type=int, default=400, help="contrast texts per class (default 400)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--out", default="results/explorer", help="result folder (default: %(default)s)")
    x.add_argument("--device", default="cpu", help="torch device (default cpu)")
    lo = sub.add_parser("localize", help="run notebooks/localize.ipynb on each packaged model whose "
                                         "result is missing (the book's localization results)")
    lo.add_argument("--models", nargs="+", default=None, metavar="M",
                    help="packaged models (default: all of them, in the registry's order)")
    lo.add_argument("--out", default=None,
                    help="folder of the results and executed notebooks (default: the repository's "
                         "results/localization, which the book reads)")
    args = parser.parse_args(argv)
    if args.command not in ("cache", "run"):  # those two print what they have to say
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "localize":
        return _localize(args)
    if args.command == "explore":
        return _explore(args)
    if args.command == "export":
        return _export(args)
    if args.command == "cache":
        return _cache(args.clear)
    if args.command == "run":
        return _run(args)
    if args.command == "verify":
        return _verify(args)
    return _batch(args)


@_user_errors_exit_2
def _batch(args: argparse.Namespace) -> int:
    summaries = batch.run_batch(args.profile, args.out, jobs=args.jobs, scheduler=args.scheduler,
                                dry_run=args.dry_run, profiles_path=args.profiles, timeout=args.timeout,
                                device=args.device, threads=args.threads)
    for s in summaries:
        took = "?" if s["seconds"] != s["seconds"] else f"{s['seconds']:.1f}s"  # NaN: no estimate
        print(f"{s['status']:8s} {s['config_hash']}  {s.get('label', '')}  {took}")
    failed = sum(s["status"] == "failed" for s in summaries)
    print(f"{len(summaries)} runs: " + ", ".join(
        f"{n} {st}" for st in ("planned", "done", "skipped", "ok", "failed")
        if (n := sum(s["status"] == st for s in summaries))))
    if args.dry_run:
        planned = [s["seconds"] for s in summaries if s["status"] == "planned"]
        known = [x for x in planned if x == x]
        if planned:
            print(f"estimated wall time of the {len(known)} planned runs with a measured peer: "
                  f"{sum(known) / 3600:.1f} h (median of finished runs of the same model and method; an "
                  "extension: the run it extends, its generation scaled by the continuations; a "
                  "perplexity-matched control: its equal-damage twin plus its calibration); "
                  f"{len(planned) - len(known)} planned runs have no measurement yet")
    return 1 if failed else 0


@_user_errors_exit_2
def _export(args: argparse.Namespace) -> int:
    import yaml

    from . import export

    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            return _user_error(ValueError(f"--param {item!r} is not NAME=VALUE, e.g. --param k=3000"))
        params[name] = yaml.safe_load(value)
    if args.method == "none":
        return _user_error(ValueError("--method none has nothing to fold; allowed: aura, det0, damp, "
                                      "meow2x, trne"))
    out = export.main(args.model, args.method, args.out, params, n_contrast=args.n_contrast,
                      seed=args.seed, results_dir=args.results, device=args.device)
    print(f"wrote {out}")
    return 0


@_user_errors_exit_2
def _explore(args: argparse.Namespace) -> int:
    from . import explorer

    out = explorer.main(args.model, args.out, n_contrast=args.n_contrast, seed=args.seed,
                        device=args.device)
    print(f"wrote {out}")
    return 0


@_user_errors_exit_2
def _localize(args: argparse.Namespace) -> int:
    import papermill as pm

    from . import localize_runs

    try:
        for model, status in localize_runs.run_localizations(args.models, args.out or localize_runs.OUT):
            print(f"{status:8s} {model}")
    except pm.PapermillExecutionError as err:
        print(f"error: the localization notebook failed in cell {err.exec_count}: {err.ename}: "
              f"{err.evalue} (its partly executed copy is failed-localize-<model>.ipynb)", file=sys.stderr)
        return 1
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


@_user_errors_exit_2
def _verify(args: argparse.Namespace) -> int:
    from . import verify

    checks = verify.verify(args.out, args.runs, args.n, atol=args.atol, workdir=args.workdir,
                           device=args.device)
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
    removed = _io.clean_model_leftovers()
    if removed:
        print(f"removed {len(removed)} temporary folder(s) of interrupted model conversions "
              f"({sum(size for _, size in removed) / 2**20:.1f} MiB)")
    for kind, (n, size) in _io.cache_usage().items():
        print(f"{kind:16s} {n:5d} entries {size / 2**20:10.1f} MiB")
    return 0


def notebook_parameters(notebook: str) -> list[str]:
    """The names a notebook declares in its cell tagged ``parameters`` (papermill's inspection)."""
    import papermill as pm

    return list(pm.inspect_notebook(notebook))


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    notebook = Path(args.notebook)
    if not notebook.is_file():
        return _user_error(FileNotFoundError(f"notebook {notebook} does not exist"))
    if Path(args.output).is_dir():
        return _user_error(IsADirectoryError(f"output {args.output} is a folder; give the executed "
                                             "notebook's file name"))
    from papermill.cli import _resolve_type

    params = {}
    for text in args.yaml:
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            return _user_error(ValueError(f"-y {text!r} is not valid YAML ({str(err).splitlines()[0]})"))
        if not isinstance(values, dict):
            return _user_error(ValueError(f"-y {text!r} must be a YAML mapping of name: value"))
        params.update(values)
    params.update({name: _resolve_type(value) for name, value in args.parameter})
    try:
        declared = notebook_parameters(str(notebook))
    except Exception as err:  # noqa: BLE001 - not a notebook: say which file
        return _user_error(ValueError(f"{notebook} is not a readable notebook ({type(err).__name__}: {err})"))
    unknown = [name for name in params if name not in declared]
    if not declared:
        return _user_error(ValueError(f"{notebook} has no cell tagged 'parameters'"))
    if unknown:
        import difflib

        hints = [f"{n!r}: did you mean {m[0]!r}?" for n in unknown
                 if (m := difflib.get_close_matches(n, declared, n=1))]
        return _user_error(ValueError(
            f"unknown parameter(s) {unknown} for {notebook}" + (f" ({'; '.join(hints)})" if hints else "")
            + f"; allowed: {', '.join(declared)}"))
    import papermill as pm

    try:
        pm.execute_notebook(str(notebook), args.output, parameters=params, progress_bar=False,
                            cwd=args.cwd or str(notebook.parent))
    except pm.PapermillExecutionError as err:
        print(f"error: {notebook} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
              f"(the executed notebook is {args.output})", file=sys.stderr)
        return 1
    print(f"executed {notebook} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
