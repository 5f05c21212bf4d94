"""Small I/O helpers shared by every stage: atomic writes, hashing, the cache directory.

Everything the compendium writes (caches, results, curated data) goes through `atomic_write`, so an
interrupted process never leaves a half-written file behind: data is written to a temporary file in
the destination folder and moved into place with `os.replace`, which is atomic on POSIX.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

CACHE_ENV = "DETOX_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$DETOX_CACHE_DIR``, default ``~/.cache/detox_utils``), created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


CACHE_KINDS = ("models", "activations", "gradient_scores", "interventions", "capability")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "detox_utils")


def cache_usage() -> dict[str, tuple[int, int]]:
    """``{kind: (entries, bytes)}`` for each cache folder (0, 0 where it does not exist)."""
    return {kind: _folder_usage(cache_root() / kind) for kind in CACHE_KINDS}


def _folder_usage(folder: Path) -> tuple[int, int]:
    """(entries not starting with '.', bytes of every file below) of one folder; (0, 0) if missing."""
    if not folder.is_dir():
        return 0, 0
    entries = sum(not p.name.startswith(".") for p in folder.iterdir())
    return entries, sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def clear_cache(kind: str) -> int:
    """Delete one cache folder (or ``"all"`` of them); returns the bytes freed. Everything in it is
    recomputed on demand: models are dequantized again, activations re-recorded, methods refitted."""
    import shutil

    allowed = (*CACHE_KINDS, "all")
    if kind not in allowed:
        raise ValueError(f"unknown cache {kind!r}; allowed: {', '.join(allowed)}")
    freed = 0
    for k in CACHE_KINDS if kind == "all" else (kind,):
        folder = cache_root() / k
        if folder.is_dir():
            freed += _folder_usage(folder)[1]
            shutil.rmtree(folder)
    return freed


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success move it onto ``dest``, else delete it.

    Use for writers that want a file name (``torch.save``, ``np.save``, ``save_pretrained`` of a
    folder is handled by `atomic_dir`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success rename it to ``dest``, else delete it."""
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``.<name>.lock`` beside ``target``.

    For compute-once caches: two processes (``batch --jobs 2``, Dask workers on one disk) that need the
    same expensive artefact take turns; the second finds it written when it gets the lock. Check for the
    artefact again after acquiring. Released on exit, also after an exception.
    """
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def atomic_write(dest: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``dest`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)
    return Path(dest)


def atomic_write_json(dest: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (NaN is refused: it is not JSON)."""
    return atomic_write(dest, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]
