"""One result schema for every run, with its provenance, and the one reader of every result record.

Every result record is a JSON object whose ``kind`` says what it is (`KINDS`): ``grid-run`` (this
module's `write_result`), ``localization`` (`experiment.write_localization`), ``explorer``
(`explorer.write`), ``evaluator-validation`` (`validate_evaluators.validate`), ``ppl-prefix``
(`ppl_prefix.remeasure`). `read_record` reads any
of them and checks the kind; records written before ``kind`` existed (grid runs, the evaluator
validation) are taken to be the kind their reader asks for, or, asked for none, the kind their folder
or file name says.

A grid run writes ``<out>/<config_hash>.json``::

    {"schema": 1, "kind": "grid-run", "status": "ok" | "failed", "config": {...},
     "config_hash": "...", "metrics": {...}, "provenance": {...}, "error": null | "<traceback>"}

and, when it generated text, ``<out>/<config_hash>.samples.csv.gz`` with every continuation and its
score under each evaluator. `load_results` flattens a folder of them into one DataFrame.

An ``ok`` result records the sha256 and size of its samples file (``provenance.files.samples``) when the
file exists as the result is written (or when the batch runner adds it after the run), so a resumed
batch can tell a complete run from one whose samples were deleted, truncated or replaced
(`incomplete_reason`).
"""
from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import registry
from ._io import REPO_ROOT, atomic_path, atomic_write_json, sha256_file

SCHEMA_VERSION = 1
KINDS = ("grid-run", "localization", "explorer", "evaluator-validation", "ppl-prefix")
GRID_RUN = "grid-run"
TRACKED_PACKAGES = (
    "torch", "transformers", "numpy", "scikit-learn", "onnxruntime", "papermill", "gguf",
    *(spec.package for spec in registry.EVALUATORS.values()),
    *dict.fromkeys(p for spec in registry.PACKAGED.values() for p in spec.packages),
)


FITS = "fits"  # beside a grid's result files: the fitted interventions its runs used (`fits_folder`)


def fits_folder(result_dir: str | Path) -> Path:
    """Where a grid's fits are published, beside its results: read by `detox_utils.experiment.fit_method`
    before the machine's cache, and copied by `detox_utils.verify` into its scratch folder."""
    return Path(result_dir) / FITS


def fit_name(method: str, key: str) -> str:
    """The file name of a fit, in the machine's cache and in `fits_folder`: ``<method>-<key>.pt``."""
    return f"{method}-{key}.pt"


def published_methods(result_dir: str | Path) -> set[str] | None:
    """The methods whose fits ``result_dir`` publishes (`fit_name` files in `fits_folder`), or None when
    it publishes none (a folder from before fits were published: every run is refitted)."""
    fits = fits_folder(result_dir)
    names = {p.name.split("-", 1)[0] for p in fits.glob(fit_name("*", "*"))} if fits.is_dir() else set()
    return names or None


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The commit of the repository (with ``-dirty`` when it has uncommitted changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_info() -> dict[str, Any]:
    """The CPU a result was computed on: its model name, and (when torch is loaded) the instruction set
    torch's kernels use and its intra-op threads. Another CPU or thread count can change float
    reduction order, hence activations in their last bits, hence a fit's boundary unit (see
    `detox_utils.verify.compare_fits`)."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    info: dict[str, Any] = {"model": name}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["capability"] = torch.backends.cpu.get_cpu_capability()
        info["threads"] = torch.get_num_threads()
    return info


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced a result: code commit, package versions, machine and CPU, time, plus ``extra``."""
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_info(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_result(path: str | Path, *, config: Mapping[str, Any], config_hash: str,
                 metrics: Mapping[str, Any] | None, provenance: Mapping[str, Any],
                 status: str = "ok", error: str | None = None) -> Path:
    """Write one result file atomically in the schema above."""
    if status not in ("ok", "failed"):
        raise ValueError(f"status {status!r} not allowed; allowed: 'ok', 'failed'")
    provenance = dict(provenance)
    samples = samples_path(path)
    if status == "ok" and "files" not in provenance and samples.is_file():
        provenance["files"] = {"samples": file_record(samples)}
    record = {
        "schema": SCHEMA_VERSION, "kind": GRID_RUN, "status": status, "config": dict(config),
        "config_hash": config_hash, "metrics": dict(metrics or {}),
        "provenance": provenance, "error": error,
    }
    return atomic_write_json(path, jsonable(record))


def samples_path(result_path: str | Path) -> Path:
    """``<out>/<config_hash>.samples.csv.gz``, the samples file beside result ``<out>/<config_hash>.json``."""
    result_path = Path(result_path)
    return result_path.with_name(f"{result_path.stem}.samples.csv.gz")


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"name", "sha256", "bytes"}`` of a file, as a result records its companion files."""
    path = Path(path)
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def record_samples(result_path: str | Path, replace: bool = False) -> bool:
    """Record the sha256 of the samples file in an ``ok`` result that lacks it (a notebook that wrote its
    result before its samples), or, with ``replace``, whose record differs from the file (the batch
    runner, right after the run wrote both); True when the result was rewritten. Only
    ``provenance.files`` changes."""
    record = read_result(result_path)
    samples = samples_path(result_path)
    if record["status"] != "ok" or not samples.is_file():
        return False
    current = record["provenance"].get("files")
    if current and not replace:
        return False
    files = {"samples": file_record(samples)}
    if current == files:
        return False
    record["provenance"]["files"] = files
    atomic_write_json(result_path, record)
    return True


def incomplete_reason(result_path: str | Path) -> str | None:
    """None when ``result_path`` is a complete ``ok`` run, else why not (one line): the result is missing,
    unreadable or not ``ok``; its samples file is missing, or differs from the sha256 recorded in the
    result; or, for a result written before that hash was recorded, the samples file cannot be read or
    has not ``n_prompts * n_samples`` rows."""
    result_path = Path(result_path)
    if not result_path.exists():
        return "no result file"
    try:
        record = read_result(result_path)
    except ValueError as err:
        return str(err)
    if record["status"] != "ok":
        return f"status {record['status']!r}"
    samples = samples_path(result_path)
    if not samples.is_file():
        return f"samples file {samples} is missing"
    prov = record.get("provenance")
    rec = (prov.get("files") or {}).get("samples") if isinstance(prov, dict) else None
    if isinstance(rec, dict) and "sha256" in rec:
        size = samples.stat().st_size
        if size != rec.get("bytes"):
            return f"samples file {samples} has {size} bytes, the result recorded {rec.get('bytes')}"
        if sha256_file(samples) != rec["sha256"]:
            return f"samples file {samples} differs from the sha256 recorded in {result_path.name}"
        return None
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    try:
        expected = int(config["n_prompts"]) * int(config["n_samples"])
    except (KeyError, TypeError, ValueError):
        return f"result {result_path} has no n_prompts / n_samples to check its samples against"
    try:
        rows = len(read_samples_csv(samples))
    except Exception as err:  # noqa: BLE001 - a damaged gzip or CSV, whatever the error
        return f"samples file {samples} is unreadable ({type(err).__name__}: {err})"
    if rows != expected:
        return f"samples file {samples} has {rows} rows, expected n_prompts * n_samples = {expected}"
    return None


def write_samples(path: str | Path, samples: pd.DataFrame) -> Path:
    """Write the generated continuations with their scores as gzip CSV, atomically. Every text field is
    quoted: a continuation may hold a bare carriage return, which pandas' default (quote only fields with
    the delimiter, a quote or ``\n``) leaves unquoted and most CSV readers take for a line break."""
    with atomic_path(path) as tmp:
        samples.to_csv(tmp, index=False, compression="gzip", quoting=csv.QUOTE_NONNUMERIC)
    return Path(path)


def read_samples_csv(path: str | Path) -> pd.DataFrame:
    """Read a samples (or per-text scores) CSV: empty strings stay strings, and only ``\n`` ends a row,
    so files written before texts were quoted, with a bare ``\r`` inside a continuation, read right."""
    return pd.read_csv(path, keep_default_na=False, lineterminator="\n")


_REQUIRED = {"status": str, "config": dict, "config_hash": str, "metrics": dict, "provenance": dict}
_FIX = "delete it and rerun the batch to recreate it"
_BY_FOLDER = {"localization": "localization", "explorer": "explorer", "evaluators": "evaluator-validation",
              "ppl-prefix": "ppl-prefix"}


def infer_kind(path: str | Path) -> str | None:
    """The kind a record without ``kind`` has, from where it lies: a ``<16 hex>.json`` name is a grid
    run; a file in a ``localization``, ``explorer`` or ``evaluators`` folder, or named
    ``validation*.json``, is a localization, explorer or evaluator-validation record; else None."""
    path = Path(path)
    if re.fullmatch(r"[0-9a-f]{16}", path.stem):
        return GRID_RUN
    if path.parent.name in _BY_FOLDER:
        return _BY_FOLDER[path.parent.name]
    return "evaluator-validation" if path.stem.startswith("validation") else None


def read_record(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """One result record of any kind (`KINDS`), checked: ValueError naming the file and what is wrong
    (unreadable, not JSON, not an object, an unknown kind, another kind than ``kind``; for a grid
    run, also the checks of `read_result`). A record without ``kind`` (written before it existed) is
    of the kind asked for, else of `infer_kind`'s; the record returned always has ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    path = Path(path)
    fix = f"; {_FIX}" if (kind or infer_kind(path)) == GRID_RUN else ""
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"result file {path} is unreadable ({exc}){fix}") from None
    if not isinstance(record, dict):
        raise ValueError(f"result file {path} holds a JSON {type(record).__name__}, not a result "
                         f"object{fix}")
    found = record.get("kind") or kind or infer_kind(path)
    if found not in KINDS:
        raise ValueError(f"result file {path} has kind {found!r}; allowed: {', '.join(KINDS)} (a file "
                         "without kind is told by its name: <config_hash>.json, or a localization, "
                         "explorer or evaluators folder)")
    if kind is not None and found != kind:
        raise ValueError(f"result file {path} is a {found!r} record, not {kind!r}")
    record = {**record, "kind": found}
    if found == GRID_RUN:
        _check_grid_run(path, record)
    return record


def runs_and_extensions(folder: str | Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The ``ok`` grid-run results of ``folder``: the runs (``prompt_start`` and ``sample_start`` 0)
    grouped by `config.extension_key`, the key they share with their extensions (runs that differ only
    in size share one), and the extensions; both in file order."""
    from .config import extension_key

    runs, extensions = {}, []
    for path in sorted(Path(folder).glob("*.json")):
        record = read_result(path)
        if record.get("status") != "ok":
            continue
        cfg = record["config"]
        if cfg.get("prompt_start", 0) or cfg.get("sample_start", 0):
            extensions.append(record)
        else:
            runs.setdefault(extension_key(cfg), []).append(record)
    return runs, extensions


def read_result(path: str | Path) -> dict[str, Any]:
    """One grid-run result file (`read_record` with kind ``grid-run``), checked against the schema
    above; ValueError naming the file and what is wrong (unreadable, not JSON, not an object, another
    kind or schema, a missing or mistyped field)."""
    return read_record(path, GRID_RUN)


def _check_grid_run(path: Path, record: dict[str, Any]) -> None:
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"result file {path} has schema {record.get('schema')!r}; this code reads "
                         f"schema {SCHEMA_VERSION}")
    for key, typ in _REQUIRED.items():
        if not isinstance(record.get(key), typ):
            what = "lacks" if key not in record else f"has a {type(record[key]).__name__} as"
            raise ValueError(f"result file {path} {what} {key!r} (a result needs {', '.join(_REQUIRED)}); "
                             f"{_FIX}")
    if record["status"] not in ("ok", "failed"):
        raise ValueError(f"result file {path} has status {record['status']!r}; allowed: 'ok', 'failed'")


def load_results(folder: str | Path, status: str | None = "ok") -> pd.DataFrame:
    """All results of a folder as one flat DataFrame: ``config.*`` and ``metrics.*`` columns."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        record = read_result(path)
        if status is not None and record["status"] != status:
            continue
        row: dict[str, Any] = {"config_hash": record["config_hash"], "status": record["status"]}
        row.update(_flatten("config", record["config"]))
        row.update(_flatten("metrics", record["metrics"]))
        row["git_commit"] = record["provenance"].get("git_commit")
        rows.append(row)
    return pd.DataFrame(rows)


def load_samples(folder: str | Path, config_hash: str) -> pd.DataFrame:
    path = Path(folder) / f"{config_hash}.samples.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"no samples for run {config_hash} in {folder}")
    return read_samples_csv(path)


def _flatten(prefix: str, obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(f"{prefix}.{key}", value))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix: ",".join(map(str, obj))}
    return {prefix: obj}


def jsonable(obj: Any) -> Any:
    """Make numpy / torch scalars and tuples JSON-safe; NaN becomes None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
