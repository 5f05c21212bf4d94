"""The experiment grid, run as papermill executions of ``notebooks/evaluate.ipynb``.

A *profile* (``profiles.yaml``) names models, benchmarks, method variants and shared settings; `expand`
turns it into `EvalConfig` s, one per run. Each run writes ``<out>/<config_hash>.json`` (see `results`)
and the executed notebook ``<out>/notebooks/<config_hash>.ipynb``. A run is done when all three are
there: an ``ok`` result, its samples file matching the sha256 the result records (`results.
incomplete_reason`) and a readable executed notebook. Done runs are skipped, so an interrupted batch
resumes where it stopped and a finished batch reruns in seconds. A failing run is recorded (status
``failed`` with its traceback) and the others go on.

Each run is executed under a lock (``<out>/.locks/``), so two batches on one folder share the work: a
run another batch is executing is left to it (and waited for at the end), and a temporary file is
removed as stale only when its run's lock is free.

Runs go to a local pool (``jobs`` kernels at a time) or, given ``scheduler="tcp://host:port"``, to a
Dask distributed cluster whose workers share the output folder's file system.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import statistics
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from . import results
from ._io import REPO_ROOT, atomic_path, file_lock, stable_hash, try_lock
from ._progress import tqdm
from .config import PPL_PREFIXES, ConfigError, EvalConfig, check_result_dir, check_threads, resolve_device

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
    match = ",perplexity-matched" if c.control_match == "perplexity" else ""
    control = f" random-control(seed={c.control_seed}{match})" if c.control_seed is not None else ""
    return f"{c.model} | {c.benchmark} | {c.method}({params}){control}{pre}"


def load_profiles(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    path = Path(path) if path else PROFILES_PATH
    if not path.is_file():
        raise FileNotFoundError(f"profiles file {path} does not exist" if not path.exists()
                                else f"profiles file {path} is not a file")
    try:
        profiles = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"profiles file {path} is not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"profiles file {path} is not valid YAML{where}: {problem}") from None
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


_PROFILE_KEYS = {"description", "models", "benchmarks", "methods", "settings", "order"}

_RUN_FIELDS = {f.name for f in dataclasses.fields(EvalConfig)} - {"model", "benchmark", "method",
                                                                  "method_params"}


def expand(profile: Mapping[str, Any]) -> list[EvalConfig]:
    """All configs of a profile: models x benchmarks x method variants, with ``settings`` shared."""
    if not isinstance(profile, Mapping):
        raise ValueError(f"a profile must be a mapping with models, benchmarks, methods (and optionally "
                         f"settings, order, description), got {profile!r}")
    missing = [k for k in ("models", "benchmarks", "methods") if k not in profile]
    if missing:
        raise ValueError(f"profile is missing {missing}; a profile needs models, benchmarks, "
                         "methods (and optionally settings)")
    unknown = sorted(set(profile) - _PROFILE_KEYS)
    if unknown:
        raise ValueError(f"profile has unknown key(s) {unknown}; allowed: {sorted(_PROFILE_KEYS)}")
    if not isinstance(profile.get("settings") or {}, Mapping):
        raise ValueError(f"profile 'settings' must be a mapping of run setting to value (e.g. "
                         f"{{n_prompts: 50}}), got {profile['settings']!r}")
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
    for name in ("models", "benchmarks"):
        bad = [v for v in profile[name] if not isinstance(v, str) or not v]
        if bad:
            raise ValueError(f"profile {name!r} must list names (strings); not allowed: {bad}")
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
    """The runs of a profile and which of them are done (`incomplete_reason` is None)."""
    out = Path(out)
    runs = []
    for cfg in expand(profile):
        path = out / f"{cfg.config_hash}.json"
        reason = incomplete_reason(path) if path.exists() else "no result"
        if reason is not None and path.exists():
            log.info("run %s is not done, it will run: %s", cfg.config_hash, reason)
        runs.append(PlannedRun(cfg, path, reason is None))
    return runs


def notebook_path(result_path: Path) -> Path:
    """The executed notebook of a run: ``<out>/notebooks/<config_hash>.ipynb``."""
    return result_path.parent / "notebooks" / f"{result_path.stem}.ipynb"


def incomplete_reason(result_path: str | Path) -> str | None:
    """None when the run of ``result_path`` is complete (`results.incomplete_reason`: an ``ok`` result and
    its samples, checked against the recorded sha256; plus a readable executed notebook), else why not."""
    result_path = Path(result_path)
    reason = results.incomplete_reason(result_path)
    if reason is not None:
        return reason
    nb = notebook_path(result_path)
    if not nb.is_file():
        return f"executed notebook {nb} is missing"
    try:
        cells = json.loads(nb.read_bytes().decode("utf-8")).get("cells")
    except (OSError, ValueError, AttributeError) as err:
        return f"executed notebook {nb} is unreadable ({type(err).__name__}: {err})"
    if not isinstance(cells, list):
        return f"executed notebook {nb} is not a notebook (no cells)"
    return None


def _is_ok(path: Path) -> bool:
    try:
        return results.read_result(path)["status"] == "ok"
    except ValueError:
        return False


def _lock_path(out: Path, run: str) -> Path:
    return out / ".locks" / run


@contextlib.contextmanager
def _run_lock(out: Path, run: str, wait: bool):
    """Hold run ``run``'s lock: yields True (waiting for it when ``wait``), or False when another process
    holds it and ``wait`` is false."""
    if wait:
        with file_lock(_lock_path(out, run)):
            yield True
    else:
        with try_lock(_lock_path(out, run)) as got:
            yield got


def run_one(config: Mapping[str, Any], out: str | Path, notebook: str | Path = NOTEBOOK,
            timeout: int | None = None, device: str = "auto", wait: bool = True,
            since: float | None = None, threads: int = 0) -> dict[str, Any]:
    """Execute the evaluation notebook for one config, under the run's lock; never raises for a
    failing run.

    The notebook writes the ``ok`` result itself (the sha256 of its samples is added to it here when
    it lacks one); if it fails, or ends without a complete run, a ``failed`` result with the traceback
    is written here. Returns ``{"config_hash", "status", "seconds"}`` with status ``ok``, ``failed``,
    ``skipped``, or ``busy`` (``wait=False`` and another process holds the lock). Given ``since`` (the
    start of the calling batch), a run found complete once the lock is held (another batch ran it) is
    ``skipped``, and a ``failed`` result written after ``since`` (by another batch) is reported, not run
    again; without it (a single run, `detox_utils.verify`) the notebook is always executed.
    """
    cfg = EvalConfig.from_params(config)
    out = Path(out).resolve()  # the notebook runs in notebooks/, so hand it an absolute path
    result_path = out / f"{cfg.config_hash}.json"
    start = time.time()
    with _run_lock(out, cfg.config_hash, wait) as got:
        if not got:
            return {"config_hash": cfg.config_hash, "status": "busy", "seconds": 0.0}
        if since is not None:  # part of a batch: another batch may have run it meanwhile
            if incomplete_reason(result_path) is None:
                return {"config_hash": cfg.config_hash, "status": "skipped", "seconds": 0.0}
            if result_path.exists() and result_path.stat().st_mtime >= since and not _is_ok(result_path):
                return {"config_hash": cfg.config_hash, "status": "failed", "seconds": 0.0}
        status = _run_locked(cfg, out, result_path, notebook, timeout, device, threads)
    return {"config_hash": cfg.config_hash, "status": status,
            "seconds": round(time.time() - start, 2)}


def _run_locked(cfg: EvalConfig, out: Path, result_path: Path, notebook: str | Path,
                timeout: int | None, device: str, threads: int = 0) -> str:
    import papermill as pm

    nb_out = notebook_path(result_path)
    nb_out.parent.mkdir(parents=True, exist_ok=True)
    # progress=False: a stored notebook would otherwise keep every progress-bar update as stderr
    params = {**cfg.to_dict(), "result_dir": str(out), "progress": False, "device": device}
    if threads:  # a notebook older than the threads parameter still runs with the default
        params["threads"] = threads
    notebook = Path(notebook).resolve()
    try:
        with atomic_path(nb_out) as tmp_nb:
            try:
                # The kernel starts in the notebook's folder (nbclient's resources path), not through
                # papermill's cwd=, which chdirs the whole process: with --jobs N, runs in threads would
                # then restore each other's working directory (nteract/papermill#473).
                pm.execute_notebook(str(notebook), str(Path(tmp_nb).resolve()), parameters=params,
                                    progress_bar=False, execution_timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(notebook.parent)}})
            except BaseException:
                if tmp_nb.exists():  # keep the partly executed notebook for debugging
                    tmp_nb.replace(nb_out.with_suffix(".failed.ipynb"))
                raise
        if not _is_ok(result_path):
            raise RuntimeError(f"notebook finished without writing an ok result at {result_path}")
        results.record_samples(result_path, replace=True)  # the files this run just wrote
        reason = incomplete_reason(result_path)
        if reason is not None:
            raise RuntimeError(f"notebook finished without a complete run: {reason}")
        status = "ok"
    except Exception:  # noqa: BLE001 - a failing run is recorded and the batch goes on
        status = "failed"
        results.write_result(result_path, config=cfg.to_dict(), config_hash=cfg.config_hash,
                             metrics=None, provenance=results.provenance(),
                             status="failed", error=traceback.format_exc())
        log.warning("run %s failed; traceback in %s", cfg.config_hash, result_path)
    return status


def run_batch(profile_name: str, out: str | Path, *, jobs: int = 1, scheduler: str | None = None,
              dry_run: bool = False, profiles_path: str | Path | None = None,
              notebook: str | Path = NOTEBOOK, progress: bool = True,
              timeout: int | None = None, device: str = "auto",
              threads: int | None = None) -> list[dict[str, Any]]:
    """Plan and run a profile; returns one summary dict per planned run (skipped ones included).

    ``threads`` is each notebook's torch CPU threads: by default the machine's cores shared between
    the ``jobs`` local kernels (``cores // jobs``, at least 1), torch's own default with one job or a
    Dask ``scheduler`` (each worker knows its machine). benchmarks/bench_scheduling.py measures the choice.

    ``device`` is handed to every notebook (``auto``: a CUDA GPU where the run executes has one). It is
    checked here for local runs; with a Dask ``scheduler`` each worker resolves it on its own machine.
    """
    if jobs < 1:
        raise ValueError(f"jobs = {jobs} is not allowed; allowed: an integer >= 1")
    threads = default_threads(jobs, scheduler) if threads is None else check_threads(threads)
    if scheduler is None:
        resolve_device(device)
    profile = get_profile(profile_name, profiles_path)
    check_result_dir(out, name="--out", create=not dry_run)
    runs = plan(profile, out)
    if dry_run:
        estimate = estimate_seconds(runs)
        return [{"config_hash": r.config.config_hash, "status": "done" if r.done else "planned",
                 "label": r.label, "seconds": 0.0 if r.done else estimate.get(r.config.config_hash, math.nan)}
                for r in runs]
    _remove_stale_temporaries(Path(out))
    todo = [r for r in runs if not r.done]
    summaries = [{"config_hash": r.config.config_hash, "status": "skipped", "label": r.label,
                  "seconds": 0.0} for r in runs if r.done]
    log.info("profile %s: %d runs, %d already done, %d to run", profile_name, len(runs),
             len(runs) - len(todo), len(todo))
    labels = {r.config.config_hash: r.label for r in todo}
    bar = tqdm(total=len(todo), desc=f"batch {profile_name}", disable=not progress, unit="run")
    for summary in _execute(todo, Path(out), jobs, scheduler, notebook, timeout, device, threads):
        summary["label"] = labels[summary["config_hash"]]
        summaries.append(summary)
        bar.update(1)
        bar.set_postfix_str(f"{summary['status']} {summary['seconds']:.0f}s")
    bar.close()
    return summaries


def estimate_seconds(runs: list[PlannedRun]) -> dict[str, float]:
    """A wall-time estimate for each planned run, from the runs of the same plan already done.

    A run's time is its notebook's step timings (the result's ``provenance.timings``) in two parts:
    the capability step (perplexity and zero-shot), which a grid pays once per *capability group*
    (model, method, parameters, random control: `experiment.capability` caches it by the edited
    weights, so the benchmark and the pre-prompt do not matter), and the rest. The rest is the median
    of finished runs with the same model, method and random-control status (failing that, of the same
    model). The capability step is added only to the first planned run of a group that no finished run
    has paid for, at the median cost such a group paid on the same model and control status (failing
    that, on the same model). Runs with no such measurement get no estimate."""
    rest: dict[tuple, list[float]] = {}
    paid: dict[tuple, float] = {}  # capability group -> the most any finished run of it spent on it
    for r in runs:
        if not r.done:
            continue
        timings = results.read_result(r.result_path)["provenance"].get("timings", {})
        cap = float(timings.get("capability", 0.0))
        for key in _estimate_keys(r.config):
            rest.setdefault(key, []).append(sum(timings.values()) - cap)
        group = _capability_group(r.config)
        paid[group] = max(paid.get(group, 0.0), cap)
    cap_cost: dict[tuple, list[float]] = {}
    for group, seconds in paid.items():
        model, _, _, control = group
        for key in ((model, control is None), (model,)):
            cap_cost.setdefault(key, []).append(seconds)
    out, charged = {}, set(paid)
    for r in runs:
        if r.done:
            continue
        base = next((statistics.median(rest[k]) for k in _estimate_keys(r.config) if k in rest), None)
        if base is None:
            continue
        group = _capability_group(r.config)
        cap = 0.0
        if group not in charged:
            charged.add(group)
            model = r.config.model
            cap = next((statistics.median(cap_cost[k]) for k in ((model, r.config.control_seed is None),
                                                               (model,)) if k in cap_cost), 0.0)
        out[r.config.config_hash] = float(base + cap)
    out.update(_extension_estimates([r for r in runs if not r.done and r.config.config_hash not in out
                                     and r.config.is_extension]))
    # a perplexity-matched control: its equal-damage twin, plus the calibration (overrides a peer of
    # another method or model, the only peer such a profile's first runs can have)
    out.update(_extension_estimates([r for r in runs if not r.done and not r.config.is_extension
                                     and r.config.control_match == "perplexity"]))
    return out


# perplexity evaluations a matched control's calibration takes: measured, the method's and 6 strengths
# (SmolLM2 Damp, `powered-ppl-controls-rtp`)
MATCH_EVALUATIONS = 7


def _extension_estimates(runs: list[PlannedRun]) -> dict[str, float]:
    """An extension run (more prompts or samples of a finished run) with no finished peer in its plan:
    the finished run it extends, in the same folder, with its generation and scoring scaled by the
    ratio of continuations, load and fit as they were, and for the capability step (perplexity only:
    an extension scores no zero-shot items) the median of the finished runs of the model that scored
    none. A perplexity-matched control is estimated the same way from its equal-damage twin (the
    config with ``control_match="damage"``), plus `MATCH_EVALUATIONS` perplexity evaluations at that
    twin's perplexity cost."""
    if not runs:
        return {}
    from .config import extension_key

    parents: dict[str, dict] = {}
    for folder in {r.result_path.parent for r in runs}:
        for path in folder.glob("*.json"):
            try:
                rec = results.read_result(path)
            except (ValueError, OSError):
                continue
            cfg = rec.get("config", {})
            if rec.get("status") == "ok" and not (cfg.get("prompt_start") or cfg.get("sample_start")):
                parents[extension_key(cfg)] = rec
    ppl_only: dict[str, list[float]] = {}
    for rec in parents.values():
        if not rec["config"].get("n_zeroshot", 0):
            ppl_only.setdefault(rec["config"]["model"], []).append(
                float(rec["provenance"].get("timings", {}).get("capability", 0.0)))
    out = {}
    for r in runs:
        matched = r.config.control_match == "perplexity"
        cfg = r.config.to_dict()
        # a matched control's twin: its equal-damage control, measured under any first token if none
        # under its own (a perplexity read without one costs about the same)
        keys = ([extension_key({**cfg, "control_match": "damage", "ppl_prefix": p})
                 for p in (cfg["ppl_prefix"], *PPL_PREFIXES)] if matched else [extension_key(cfg)])
        parent = next((parents[k] for k in keys if k in parents), None)
        if parent is None:
            continue
        t = parent["provenance"].get("timings", {})
        pc = parent["config"]
        ratio = (r.config.n_prompts * r.config.n_samples) / (pc["n_prompts"] * pc["n_samples"])
        scaled = float(t.get("generate", 0.0)) + float(t.get("score", 0.0))
        cap = statistics.median(ppl_only.get(r.config.model, [float(t.get("capability", 0.0))]))
        fixed = sum(t.values()) - scaled - float(t.get("capability", 0.0))
        calibration = MATCH_EVALUATIONS * float(t.get("capability", 0.0)) if matched else 0.0
        out[r.config.config_hash] = float(fixed + cap + ratio * scaled + calibration)
    return out


def _estimate_keys(c: EvalConfig) -> tuple[tuple, ...]:
    return ((c.model, c.method, c.control_seed is None, c.control_match), (c.model,))


def _capability_group(c: EvalConfig) -> tuple:
    """Runs that share the capability record (`experiment.capability`'s cache key, up to the settings
    every run of a grid shares)."""
    return (c.model, c.method, stable_hash(dict(c.method_params)), c.control_seed)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files that a killed batch left behind (a clean exit never leaves any): those of
    runs whose lock is free. A run in progress in another batch holds its lock, so its temporaries stay."""
    for folder in (out, out / "notebooks"):
        for tmp in folder.glob(".*.tmp*"):
            run = tmp.name[1:].split(".", 1)[0]  # .<config_hash>.<file name>.<random>.tmp<suffix>
            with try_lock(_lock_path(out, run or "_")) as free:
                if free:
                    log.info("removing %s, left by an interrupted run", tmp)
                    tmp.unlink(missing_ok=True)


def default_threads(jobs: int, scheduler: str | None = None) -> int:
    """Torch threads per notebook for ``jobs`` local kernels: ``cores // jobs`` (at least 1) when
    ``jobs > 1``; 0 (torch's default) for one job or on a Dask cluster."""
    if scheduler or jobs <= 1:
        return 0
    return max(1, (os.cpu_count() or 1) // jobs)


def _execute(todo: list[PlannedRun], out: Path, jobs: int, scheduler: str | None,
             notebook: str | Path, timeout: int | None, device: str,
             threads: int = 0) -> Iterable[dict[str, Any]]:
    """Run ``todo``: first every run no other batch holds (``busy`` ones are deferred), then the deferred
    ones, waiting for their locks (each is skipped if the other batch completed it)."""
    since = time.time()
    args = {r.config.config_hash: (r.config.to_dict(), str(out), str(notebook), timeout, device)
            for r in todo}
    busy: list[str] = []
    for wait in (False, True):
        batch_args = [(*args[h], wait, since, threads) for h in (busy if wait else args)]
        busy = []
        for summary in _map(run_one, batch_args, jobs, scheduler):
            if summary["status"] == "busy":
                log.info("run %s is being executed by another batch; coming back to it at the end",
                         summary["config_hash"])
                busy.append(summary["config_hash"])
            else:
                yield summary
        if not busy:
            return


def _map(fn, arg_tuples: list[tuple], jobs: int, scheduler: str | None) -> Iterable[dict[str, Any]]:
    """``fn(*args)`` for each tuple, as they finish: on a Dask cluster, in a local pool, or in order."""
    if not arg_tuples:
        return
    if scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = [client.submit(fn, *a, pure=False) for a in arg_tuples]
            for fut in as_completed(futures):
                yield fut.result()
        return
    if jobs == 1:
        for a in arg_tuples:
            yield fn(*a)
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed as done_first

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is its own kernel process
        futures = [pool.submit(fn, *a) for a in arg_tuples]
        for fut in done_first(futures):
            yield fut.result()


__all__ = ["ConfigError", "PlannedRun", "default_threads", "expand", "get_profile", "incomplete_reason",
           "load_profiles", "notebook_path", "plan", "run_batch", "run_label", "run_one"]
