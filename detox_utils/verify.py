"""Re-execute published runs and compare them with the stored results: does this machine reproduce
the book's numbers?

``python -m detox_utils verify --out results/default [--runs HASH ...] [--n N]`` reruns the chosen
runs of a result folder (by default the ``N`` cheapest by their recorded timings among those whose fit the
folder publishes, `results.published_methods`) through the same
papermill notebook into a scratch folder, then compares, for each run,

- the fitted intervention as each result describes it (units per layer and site, factors), first,
  since a different fit explains every difference after it;
- every metric leaf (numbers within ``atol + rtol * |stored|``, everything else exactly), and
- the generated continuations, token for token (the samples file), and their scores.

A run is *reproduced* when nothing differs. Generation is seeded, so on the same software stack and
device kind a rerun is expected to match exactly; another BLAS, GPU or dtype may change sampled tokens
and so every downstream number, which this check reports rather than hides.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import batch, results
from .results import published_methods
from ._progress import tqdm
from .config import EvalConfig, resolve_device


@dataclass
class Verification:
    config_hash: str
    label: str
    status: str                    # "reproduced", "differs" or "failed" (the rerun itself failed)
    n_metrics: int = 0
    n_samples: int = 0
    max_abs_diff: float = 0.0      # over the numeric metric leaves
    differences: list[str] = field(default_factory=list)  # up to MAX_LISTED human-readable lines
    seconds: float = 0.0


MAX_LISTED = 20
log = logging.getLogger(__name__)


def _leaves(prefix: str, obj: Any) -> Iterator[tuple[str, Any]]:
    """Every scalar of a nested metrics record, keyed by its path (``toxicity.max.emt``, ``x[3]``)."""
    if isinstance(obj, dict):
        for key in sorted(obj):
            yield from _leaves(f"{prefix}.{key}" if prefix else str(key), obj[key])
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _leaves(f"{prefix}[{i}]", value)
    else:
        yield prefix, obj


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# Metric families that are long float32 reductions over a teacher-forced forward (no sampling): their
# summation order follows the batch shapes and BLAS threading, so a rerun differs in the 6th digit
# while every sampled token and score matches. Compared at this relative tolerance instead of ``rtol``.
FAMILY_RTOL = {"perplexity": 1e-4}


def compare_metrics(stored: dict[str, Any], rerun: dict[str, Any], *, atol: float = 1e-9,
                    rtol: float = 1e-7) -> tuple[int, float, list[str]]:
    """Compare two metric records leaf by leaf. Returns (leaves compared, max |difference| over
    numeric leaves, one line per difference). ``None`` (a NaN written to JSON) equals ``None``.
    Leaves of a family in `FAMILY_RTOL` use its relative tolerance (the larger of it and ``rtol``).

    A metric family (a top-level key, e.g. ``diversity``) that the stored result does not have at all
    was added to the pipeline after the run was published: it is not compared. Inside every family the
    stored result has, a leaf missing on either side is a difference."""
    rerun = {k: v for k, v in rerun.items() if k in stored}
    a, b = dict(_leaves("", stored)), dict(_leaves("", rerun))
    diffs = [f"{k}: only in the stored result" for k in sorted(a.keys() - b.keys())]
    diffs += [f"{k}: only in the rerun" for k in sorted(b.keys() - a.keys())]
    worst = 0.0
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key], b[key]
        if _is_number(x) and _is_number(y):
            d = abs(float(x) - float(y))
            if math.isnan(d):
                d = math.inf
            worst = max(worst, d)
            tol = max(rtol, FAMILY_RTOL.get(key.split(".")[0].split("[")[0], 0.0))
            if d > atol + tol * abs(float(x)):
                diffs.append(f"{key}: stored {x!r}, rerun {y!r} (|diff| {d:.3g})")
        elif x != y:
            diffs.append(f"{key}: stored {x!r}, rerun {y!r}")
    return len(a.keys() | b.keys()), worst, diffs


def compare_samples(stored, rerun, *, atol: float = 1e-6) -> list[str]:
    """Continuations must match exactly (token for token, as decoded text); scores within ``atol``."""
    if len(stored) != len(rerun):
        return [f"samples: stored {len(stored)} rows, rerun {len(rerun)}"]
    diffs = []
    for col in stored.columns:
        if col not in rerun.columns:
            diffs.append(f"samples: column {col} missing from the rerun")
            continue
        if col.startswith("score."):
            bad = (stored[col].astype(float) - rerun[col].astype(float)).abs() > atol
        else:
            bad = stored[col].astype(str) != rerun[col].astype(str)
        if bad.any():
            first = int(bad.to_numpy().nonzero()[0][0])
            a, b = (_plain(df[col].iloc[first]) for df in (stored, rerun))
            diffs.append(f"samples.{col}: {int(bad.sum())} of {len(bad)} rows differ (first: row {first}"
                         f", stored {a!r}, rerun {b!r})")
    return diffs


def compare_fits(stored: dict[str, Any], rerun: dict[str, Any], *, atol: float = 1e-9,
                 rtol: float = 1e-7) -> list[str]:
    """Differences between the fitted interventions two results describe (``provenance.method``: units
    per layer and site, factors, TRNE's layer scores), each line prefixed ``fit:``. When the fit
    differs, every metric downstream of it may too: a unit at the top-k boundary whose AUROC moved by
    one toxic/neutral pair is enough to change sampled tokens."""
    a = (stored.get("provenance") or {}).get("method")
    b = (rerun.get("provenance") or {}).get("method")
    if a is None or b is None:
        return [] if a is b else ["fit: described in only one of the two results"]
    return [f"fit: {line}" for line in compare_metrics(a, b, atol=atol, rtol=rtol)[2]]


def _plain(x: Any) -> Any:
    """A numpy scalar as the Python value it holds (so messages read 0.31, not np.float64(0.31))."""
    return x.item() if hasattr(x, "item") else x


def _cost(record: dict[str, Any]) -> float:
    timings = record.get("provenance", {}).get("timings") or {}
    return float(sum(v for v in timings.values() if _is_number(v))) or math.inf


def select_runs(folder: str | Path, runs: list[str] | None = None, n: int = 1) -> list[dict[str, Any]]:
    """The stored ``ok`` records to re-execute: the given hashes, else the ``n`` cheapest runs whose
    fit is published (`results.published_methods`), since a fit recomputed on another CPU may move a
    unit at a selection boundary and so every number after it; given hashes are rerun whatever their fit."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no result folder at {folder}")
    records = {}
    for path in sorted(folder.glob("*.json")):
        rec = results.read_result(path)
        if rec["status"] == "ok":
            records[rec["config_hash"]] = rec
    if not records:
        raise ValueError(f"{folder} holds no finished ('ok') results to verify")
    if runs:
        unknown = [h for h in runs if h not in records]
        if unknown:
            raise ValueError(f"no finished run {', '.join(unknown)} in {folder}; allowed: "
                             + ", ".join(sorted(records)))
        return [records[h] for h in runs]
    if n < 1:
        raise ValueError(f"n = {n} is not allowed; allowed: an integer >= 1")
    published = published_methods(folder)
    eligible = [r for r in records.values() if published is None or r["config"]["method"] in published]
    if not eligible:
        raise ValueError(f"no run of {folder} has a published fit (fits of: "
                         f"{', '.join(sorted(published))}); name runs with --runs to rerun them with a new fit")
    skipped = len(records) - len(eligible)
    if skipped:
        methods = sorted({r["config"]["method"] for r in records.values()} - published)
        log.warning("%d of %d runs of %s are not candidates: their fit (%s) is not published; name them "
                    "with --runs to rerun them with a new fit", skipped, len(records), folder, ", ".join(methods))
    return sorted(eligible, key=lambda r: (_cost(r), r["config_hash"]))[:n]


def verify(folder: str | Path, runs: list[str] | None = None, n: int = 1, *, atol: float = 1e-9,
           rtol: float = 1e-7, workdir: str | Path | None = None, device: str = "auto",
           timeout: int | None = None,
           notebook: str | Path = batch.NOTEBOOK, progress: bool = True) -> list[Verification]:
    """Re-execute the selected runs of ``folder`` into ``workdir`` (a temporary folder by default,
    removed afterwards) and compare each with its stored result. The stored files are only read."""
    folder = Path(folder)
    resolve_device(device)
    chosen = select_runs(folder, runs, n)
    with tempfile.TemporaryDirectory(prefix="detox-verify-") as tmp:
        scratch = Path(workdir) if workdir is not None else Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        if results.fits_folder(folder).is_dir():  # the reruns read the published fits, as the runs did
            shutil.copytree(results.fits_folder(folder), results.fits_folder(scratch), dirs_exist_ok=True)
        out: list[Verification] = []
        bar = tqdm(chosen, desc="verify", unit="run", disable=not progress)
        for record in bar:
            if out:
                bar.set_postfix_str(f"{sum(v.status == 'reproduced' for v in out)}/{len(out)} reproduced")
            h, config = record["config_hash"], record["config"]
            label = batch.run_label(EvalConfig.from_params(config))
            summary = batch.run_one(config, scratch, notebook, timeout=timeout, device=device)
            if summary["config_hash"] != h:  # the code now hashes this config differently
                out.append(Verification(h, label, "failed", seconds=summary["seconds"],
                                        differences=[f"config now hashes to {summary['config_hash']}"]))
                continue
            new = results.read_result(scratch / f"{h}.json")
            if new["status"] != "ok":
                tail = (new.get("error") or "").strip().splitlines()[-1:]
                out.append(Verification(h, label, "failed", seconds=summary["seconds"],
                                        differences=tail))
                continue
            diffs = compare_fits(record, new, atol=atol, rtol=rtol)  # the cause first, if it is the fit
            n_leaves, worst, metric_diffs = compare_metrics(record["metrics"], new["metrics"],
                                                            atol=atol, rtol=rtol)
            diffs += metric_diffs
            stored_s = results.load_samples(folder, h)
            diffs += compare_samples(stored_s, results.load_samples(scratch, h))
            out.append(Verification(h, label, "differs" if diffs else "reproduced",
                                    n_metrics=n_leaves, n_samples=len(stored_s), max_abs_diff=worst,
                                    differences=diffs[:MAX_LISTED], seconds=summary["seconds"]))
            log.info("%s %s: %s", h, out[-1].label, out[-1].status)
        return out


__all__ = ["Verification", "compare_fits", "compare_metrics", "compare_samples", "published_methods",
           "select_runs", "verify"]
