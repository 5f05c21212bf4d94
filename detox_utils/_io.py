"""Small I/O helpers shared by every stage: atomic writes, hashing, the cache directory, and the one
check of text inputs (`check_texts`).

Everything the compendium writes (caches, results, curated data) goes through `atomic_write`, so an
interrupted process never leaves a half-written file behind: data is written to a temporary file in
the destination folder and moved into place with `os.replace`, which is atomic on POSIX.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

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
    return entries, folder_bytes(folder)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file below ``folder`` (files that vanish while counting are skipped)."""
    total = 0
    for f in Path(folder).rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:
            pass
    return total


def clear_command(kind: str) -> str:
    """The command that empties one cache folder."""
    return f"python -m detox_utils cache --clear {kind}"


class CacheIntegrityError(ValueError):
    """A cached file does not match what was recorded when it was written (damaged, truncated, replaced);
    the message names the file, what is wrong and the command that clears that cache."""

    def __init__(self, path: str | os.PathLike, kind: str, reason: str) -> None:
        self.path, self.kind, self.reason = Path(path), kind, reason
        super().__init__(f"cached file {self.path} is damaged or was changed after it was written "
                         f"({reason}); refusing to use it. Clear the {kind} cache with "
                         f"`{clear_command(kind)}` and rerun: it is recomputed on demand")


def _sidecar(path: Path) -> Path:
    return path.parent / f".{path.name}.sha256"


def write_checksum(path: str | os.PathLike) -> Path:
    """Record the sha256 and size of ``path`` in a hidden sidecar ``.<name>.sha256`` beside it (JSON);
    `verify_checksum` checks the file against it before it is read. Call after the file is in place."""
    path = Path(path)
    return atomic_write_json(_sidecar(path), {"file": path.name, "sha256": sha256_file(path),
                                              "bytes": path.stat().st_size})


def verify_checksum(path: str | os.PathLike, kind: str) -> bool:
    """Whether cached file ``path`` can be trusted: True when it matches the sha256 and size recorded
    by `write_checksum`; False when it has no (readable) checksum record, i.e. it was written by older
    code (recompute it and write it again). CacheIntegrityError, naming the file and the command that
    clears cache ``kind``, when it does not match its record."""
    path = Path(path)
    try:
        record = json.loads(_sidecar(path).read_text())
        expected, size = record["sha256"], record["bytes"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False
    actual_size = path.stat().st_size
    if actual_size != size:
        raise CacheIntegrityError(path, kind, f"{actual_size} bytes, {size} recorded")
    actual = sha256_file(path)
    if actual != expected:
        raise CacheIntegrityError(path, kind, f"sha256 {actual}, {expected} recorded")
    return True


# A temporary folder of a conversion: ``.<name>.<random>.tmp`` (`_io.atomic_dir`) or ``.gguf.<name>.<random>``
# (the assembled GGUF); older code named the latter ``.gguf.<random>``.
_LEFTOVER = re.compile(r"^\.(?:gguf\.(?P<gguf>.+)\.[^.]+|(?P<dest>.+)\.[^.]+\.tmp)$")
_LEGACY_GGUF = re.compile(r"^\.gguf\.[^.]+$")


def clean_model_leftovers() -> list[tuple[Path, int]]:
    """Remove the temporary folders of killed model conversions from the models cache; returns
    ``[(folder, bytes)]`` removed. A folder is removed only when no process holds its model's conversion
    lock (a conversion in progress keeps its folders); an unnamed ``.gguf.*`` folder of older code only
    when no conversion of any model is in progress."""
    import shutil

    root = cache_root() / "models"
    if not root.is_dir():
        return []
    removed: list[tuple[Path, int]] = []
    hidden = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".")]
    if not hidden:
        return removed
    with contextlib.ExitStack() as stack:
        free: dict[str, bool] = {}

        def lock_free(model: str) -> bool:
            if model not in free:
                free[model] = stack.enter_context(try_lock(root / model))
            return free[model]

        legacy = [p for p in hidden if _LEGACY_GGUF.match(p.name)]
        named = [p for p in hidden if p not in legacy]
        for path in named:
            match = _LEFTOVER.match(path.name)
            if match and lock_free(match.group("gguf") or match.group("dest")):
                removed.append((path, folder_bytes(path)))
                shutil.rmtree(path, ignore_errors=True)
        if legacy:
            locks = [p.name[1:-len(".lock")] for p in root.glob(".*.lock")]
            if all(lock_free(model) for model in locks):
                for path in legacy:
                    removed.append((path, folder_bytes(path)))
                    shutil.rmtree(path, ignore_errors=True)
    return removed


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


def compute_once(path: str | os.PathLike, read: Callable[[Path], T | None], compute: Callable[[Path], T]) -> T:
    """Check, lock, check, compute: the expensive artefact at ``path``, made once also when several
    processes (``batch --jobs N``, Dask workers on one disk) need it at the same time.

    ``read(path)`` gives the artefact when it is there and can be trusted, else None. It is tried first,
    and again after taking `file_lock` on ``path`` (another process may have made it meanwhile); only
    when both give None does ``compute(path)`` make it, write it to ``path`` atomically and return it.
    The lock is released on exit, also after an exception.
    """
    path = Path(path)
    value = read(path)
    if value is not None:
        return value
    with file_lock(path):
        value = read(path)
        return compute(path) if value is None else value


def compute_once_file(path: str | os.PathLike, compute: Callable[[], T], *, kind: str,
                      load: Callable[[Path], T], save: Callable[[T, Path], Any]) -> T:
    """`compute_once` for one cache file of cache ``kind`` checked by its checksum sidecar: ``load(path)``
    when the file matches its record (`verify_checksum`: no record, recompute; a mismatch raises
    CacheIntegrityError), else ``compute()``, saved by ``save(value, tmp)`` to a temporary path that is
    then moved onto ``path`` (`atomic_path`), with its checksum recorded (`write_checksum`)."""
    def read(p: Path) -> T | None:
        return load(p) if p.exists() and verify_checksum(p, kind) else None

    def make(p: Path) -> T:
        value = compute()
        with atomic_path(p) as tmp:
            save(value, tmp)
        write_checksum(p)
        return value

    return compute_once(path, read, make)


@contextlib.contextmanager
def try_lock(target: str | os.PathLike) -> Iterator[bool]:
    """Like `file_lock`, without waiting: yields True holding the lock, or False when another process
    holds it (nothing is held then). For work that another process may be doing right now."""
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
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


def check_texts(texts: Iterable[str], name: str = "texts", allow_empty: bool = False) -> list[str]:
    """``texts`` as a list of str: the one check of every text input (prompts, texts to score, to
    record or to fit on).

    Allowed: a list, tuple, pandas Series or any other iterable of str (``""`` included), empty only
    with ``allow_empty``. Refused, with a message that names ``name``: a single str or bytes
    (TypeError: wrap it in a list), something that is not iterable (TypeError), an item that is not a
    str (TypeError naming its index and type), an empty input (ValueError)."""
    allowed = "a list of str"
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str ({allowed}), not a single "
                        f"{type(texts).__name__}; wrap it in a list")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of str ({allowed}), got "
                        f"{type(texts).__name__}") from None
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        more = f" ({len(bad)} items are not str, positions {bad[:10]})" if len(bad) > 1 else ""
        raise TypeError(f"{name}[{bad[0]}] is {type(items[bad[0]]).__name__}, not str; every item of "
                        f"{name} must be a str{more}")
    if not items and not allow_empty:
        raise ValueError(f"{name} is empty; give at least one text ({allowed})")
    return items
