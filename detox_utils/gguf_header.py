"""The header of a GGUF file, read without its weights: metadata and tensor table (`gguf_header`),
also across the chunk files a packaged model ships in (`packaged_gguf`, from `detox_utils.packaged`).
The book's model cards read shapes and parameter counts from it; ``gguf.GGUFReader`` would map the
whole file."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ._io import sha256_file


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _Concatenated:
    """Read-only stream over several files one after another (a GGUF shipped in chunks)."""

    def __init__(self, paths: Iterable[Path]):
        self._paths = list(paths)
        self._file = None

    def __enter__(self) -> "_Concatenated":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self._file is None:
                if not self._paths:
                    raise ValueError("GGUF stream ended inside its header (truncated file?)")
                self._file = open(self._paths.pop(0), "rb")
            chunk = self._file.read(n - len(out))
            if not chunk:
                self._file.close()
                self._file = None
            out += chunk
        return out


def _gguf_read(stream, fmt: str):
    import struct

    return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]


def _gguf_string(stream) -> str:
    return stream.read(_gguf_read(stream, "<Q")).decode("utf-8", "replace")


def _gguf_value(stream, vtype: int):
    """One metadata value; arrays are skipped and summarised as ``[n items]``."""
    import struct

    if vtype == _GGUF_STRING:
        return _gguf_string(stream)
    if vtype == _GGUF_ARRAY:
        itype, count = _gguf_read(stream, "<I"), _gguf_read(stream, "<Q")
        if itype in _GGUF_SCALARS:
            stream.read(count * struct.calcsize(_GGUF_SCALARS[itype]))
        else:
            for _ in range(count):
                _gguf_value(stream, itype)
        return f"[{count} items]"
    if vtype not in _GGUF_SCALARS:
        raise ValueError(f"unknown GGUF metadata type {vtype}")
    return _gguf_read(stream, _GGUF_SCALARS[vtype])


def gguf_header(paths: Iterable[Path]) -> dict:
    """Metadata and tensor table of a GGUF file (given as its chunk files, in order), weights unread.

    Returns ``{"metadata": {key: value}, "tensors": [(name, shape, ggml_type_name)]}``.
    """
    from gguf.constants import GGMLQuantizationType

    with _Concatenated(paths) as stream:
        if stream.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (magic bytes differ)")
        _gguf_read(stream, "<I")  # format version
        n_tensors, n_kv = _gguf_read(stream, "<Q"), _gguf_read(stream, "<Q")
        metadata = {}
        for _ in range(n_kv):
            key = _gguf_string(stream)
            metadata[key] = _gguf_value(stream, _gguf_read(stream, "<I"))
        tensors = []
        for _ in range(n_tensors):
            name = _gguf_string(stream)
            shape = tuple(_gguf_read(stream, "<Q") for _ in range(_gguf_read(stream, "<I")))
            ggml_type = GGMLQuantizationType(_gguf_read(stream, "<I")).name
            _gguf_read(stream, "<Q")  # offset of the tensor's data
            tensors.append((name, shape, ggml_type))
    return {"metadata": metadata, "tensors": tensors}


def packaged_gguf(name: str) -> tuple[list[Path], str, str]:
    """The GGUF of packaged model ``name`` as its file(s), the GGUF's name and its sha256 (the pinned
    one, else hashed here), all from `detox_utils.packaged.gguf_files`."""
    from . import packaged  # imports torch: only when a packaged model's GGUF is asked for

    files = packaged.gguf_files(name)
    sha = files.sha256 or sha256_file(files.paths[0])
    return list(files.paths), files.file_name, sha
