"""The experiment grid, run as papermill executions of ``notebooks/evaluate.ipynb``.

A *profile* (``profiles.yaml``) names models, benchmarks, method variants and shared settings; `expand`
turns it into `EvalConfig` s, one per run. Each run writes ``<out>/<config_hash>.json`` (see `results`)
and the executed notebook ``<out>/notebooks/<config_hash>.ipynb``. A run whose hash already has an
``ok`` result is skipped, so an interrupted batch resumes where it stopped and a finished batch reruns
in seconds. A failing run is recorded (status ``failed`` with its traceback) and the others go on.

Runs go to a local pool (``jobs`` kernels at a time) or, given ``scheduler="tcp://host:port"``, to a
Dask distributed cluster whose workers share the output folder's file system.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import results
from ._io import REPO_ROOT, atomic_path
from ._progress import tqdm
from .config import ConfigError, EvalConfig, resolve_device

log = logging.getLogger(__name__)

PROFILES_PATH = Path(__file__).resolve().parent / "profiles.yaml"
NOTEBOOK = REPO_ROOT / "notebooks" / "evaluate.ipynb"


@dataclass(frozen=True)
class PlannedRun:
    config: EvalConfig
    result_path: Path
    done: bool

    @property
    def label(self) -> str:
        return run_label(self.config)


def run_label(c: EvalConfig) -> str:
    """One line naming a run: ``model | benchmark | method(params) [+preprompt]``."""
    params = ",".join(f"{k}={v}" for k, v in sorted(c.method_params.items()))
    pre = " +preprompt" if c.preprompt else ""
    control = f" random-control(seed={c.control_seed})" if c.control_seed is not None else ""
    return f"{c.model} | {c.benchmark} | {c.method}({params}){control}{pre}"


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    path = Path(path) if path else PROFILES_PATH
    if not path.exists():
        raise FileNotFoundError(f"profiles file {path} does not exist")
    profiles = yaml.safe_load(path.read_text())
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError(f"profiles file {path} must map profile names to profiles")
    return profiles


def get_profile(name: str, path: str | Path | None = None) -> dict[str, Any]:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; profiles: {', '.join(sorted(profiles))}")
    return profiles[name]


def _variants(spec: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """Expand list-valued entries of a method spec into their cartesian product."""
    keys = sorted(spec)
    values = [v if isinstance(v, list) else [v] for v in (spec[k] for k in keys)]
    for combo in itertools.product(*values):
        yield dict(zip(keys, combo))


_RUN_FIELDS = {f.name for f in dataclasses.fields(EvalConfig)} - {"model", "benchmark", "method",
                                                                  "method_params"}


def expand(profile: Mapping[str, Any]) -> list[EvalConfig]:
    """All configs of a profile: models x benchmarks x method variants, with ``settings`` shared."""
    missing = [k for k in ("models", "benchmarks", "methods") if k not in profile]
    if missing:
        raise ValueError(f"profile is missing {missing}; a profile needs models, benchmarks, "
                         "methods (and optionally settings)")
    settings = dict(profile.get("settings") or {})
    configs: list[EvalConfig] = []
    seen: set[str] = set()
    order = profile.get("order", "models")
    if order not in ("models", "methods"):
        raise ValueError(f"profile order {order!r} is not allowed; allowed: models (every run of a model, "
                         "then the next), methods (each method entry on every model, then the next)")
    for key in ("models", "benchmarks", "methods"):
        if not isinstance(profile[key], list) or not profile[key]:
            raise ValueError(f"profile {key!r} must be a non-empty list, got {profile[key]!r}")
    cells = itertools.product(profile["models"], profile["benchmarks"], profile["methods"])
    if order == "methods":
        cells = ((m, b, spec) for spec, m, b in itertools.product(
            profile["methods"], profile["models"], profile["benchmarks"]))
    for model, benchmark, spec in cells:
        if not isinstance(spec, Mapping):
            raise ValueError(f"method entry {spec!r} must be a mapping such as {{method: aura}}")
        if "method" not in spec:
            raise ValueError(f"method entry {spec!r} needs a 'method' key")
        for variant in _variants(spec):
            method = variant.pop("method")
            # run settings in a method entry (preprompt, control_seed, ...) override the shared ones;
            # every other key is a parameter of the method
            own = {k: variant.pop(k) for k in list(variant) if k in _RUN_FIELDS}
            cfg = EvalConfig.from_params({**settings, **own, "model": model, "benchmark": benchmark,
                                          "method": method, "method_params": variant})
            if cfg.config_hash not in seen:
                seen.add(cfg.config_hash)
                configs.append(cfg)
    return configs


def plan(profile: Mapping[str, Any], out: str | Path) -> list[PlannedRun]:
    out = Path(out)
    runs = []
    for cfg in expand(profile):
        path = out / f"{cfg.config_hash}.json"
        done = path.exists() and _is_ok(path)
        runs.append(PlannedRun(cfg, path, done))
    return runs


def _is_ok(path: Path) -> bool:
    try:
        return results.read_result(path)["status"] == "ok"
    except ValueError:
        return False


def run_one(config: Mapping[str, Any], out: str | Path, notebook: str | Path = NOTEBOOK,
            timeout: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Execute the evaluation notebook for one config; never raises for a failing run.

    The notebook writes the ``ok`` result itself; if it fails, a ``failed`` result with the
    traceback is written here. Returns ``{"config_hash", "status", "seconds"}``.
    """
    import papermill as pm

    cfg = EvalConfig.from_params(config)
    out = Path(out).resolve()  # the notebook runs in notebooks/, so hand it an absolute path
    result_path = out / f"{cfg.config_hash}.json"
    nb_out = out / "notebooks" / f"{cfg.config_hash}.ipynb"
    nb_out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # progress=False: a stored notebook would otherwise keep every progress-bar update as stderr
    params = {**cfg.to_dict(), "result_dir": str(out), "progress": False, "device": device}
    try:
        with atomic_path(nb_out) as tmp_nb:
            try:
                pm.execute_notebook(str(notebook), str(tmp_nb), parameters=params,
                                    progress_bar=False, execution_timeout=timeout,
                                    cwd=str(Path(notebook).parent), kernel_name="python3")
            except BaseException:
                if tmp_nb.exists():  # keep the partly executed notebook for debugging
                    tmp_nb.replace(nb_out.with_suffix(".failed.ipynb"))
                raise
        status = "ok" if _is_ok(result_path) else "failed"
        if status == "failed":
            raise RuntimeError(f"notebook finished without writing an ok result at {result_path}")
    except Exception:  # noqa: BLE001 - a failing run is recorded and the batch goes on
        status = "failed"
        results.write_result(result_path, config=cfg.to_dict(), config_hash=cfg.config_hash,
                             metrics=None, provenance=results.provenance(),
                             status="failed", error=traceback.format_exc())
        log.warning("run %s failed; traceback in %s", cfg.config_hash, result_path)
    return {"config_hash": cfg.config_hash, "status": status,
            "seconds": round(time.time() - start, 2)}


def run_batch(profile_name: str, out: str | Path, *, jobs: int = 1, scheduler: str | None = None,
              dry_run: bool = False, profiles_path: str | Path | None = None,
              notebook: str | Path = NOTEBOOK, progress: bool = True,
              timeout: int | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """Plan and run a profile; returns one summary dict per planned run (skipped ones included).

    ``device`` is handed to every notebook (``auto``: a CUDA GPU where the run executes has one). It is
    checked here for local runs; with a Dask ``scheduler`` each worker resolves it on its own machine.
    """
    if jobs < 1:
        raise ValueError(f"jobs = {jobs} is not allowed; allowed: an integer >= 1")
    if scheduler is None:
        resolve_device(device)
    profile = get_profile(profile_name, profiles_path)
    runs = plan(profile, out)
    if dry_run:
        return [{"config_hash": r.config.config_hash, "status": "done" if r.done else "planned",
                 "label": r.label, "seconds": 0.0} for r in runs]
    _remove_stale_temporaries(Path(out))
    todo = [r for r in runs if not r.done]
    summaries = [{"config_hash": r.config.config_hash, "status": "skipped", "label": r.label,
                  "seconds": 0.0} for r in runs if r.done]
    log.info("profile %s: %d runs, %d already done, %d to run", profile_name, len(runs),
             len(runs) - len(todo), len(todo))
    labels = {r.config.config_hash: r.label for r in todo}
    bar = tqdm(total=len(todo), desc=f"batch {profile_name}", disable=not progress, unit="run")
    for summary in _execute(todo, Path(out), jobs, scheduler, notebook, timeout, device):
        summary["label"] = labels[summary["config_hash"]]
        summaries.append(summary)
        bar.update(1)
        bar.set_postfix_str(f"{summary['status']} {summary['seconds']:.0f}s")
    bar.close()
    return summaries


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files that a killed batch left behind (a clean exit never leaves any)."""
    for folder in (out, out / "notebooks"):
        for tmp in folder.glob(".*.tmp*"):
            log.info("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)


def _execute(todo: list[PlannedRun], out: Path, jobs: int, scheduler: str | None,
             notebook: str | Path, timeout: int | None, device: str) -> Iterable[dict[str, Any]]:
    args = [(r.config.to_dict(), str(out), str(notebook), timeout, device) for r in todo]
    if scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = [client.submit(run_one, *a, pure=False) for a in args]
            for fut in as_completed(futures):
                yield fut.result()
        return
    if jobs == 1:
        for a in args:
            yield run_one(*a)
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed as done_first

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is its own kernel process
        futures = [pool.submit(run_one, *a) for a in args]
        for fut in done_first(futures):
            yield fut.result()


__all__ = ["ConfigError", "PlannedRun", "expand", "get_profile", "load_profiles", "plan",
           "run_batch", "run_label", "run_one"]
