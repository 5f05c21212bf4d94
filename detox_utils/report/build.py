"""The book build and its command line: ``python -m detox_utils book build [--results DIR]
[--no-strict]`` builds the book strictly with jupyter-book, ``python -m detox_utils book retitle
NOTEBOOK --title TITLE`` gives an executed notebook its own page title."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from .._io import REPO_ROOT
from .common import RESULTS_ENV, grid_folder

log = logging.getLogger(__name__)
def inputs_fingerprint(root: Path = REPO_ROOT, grid: Path | None = None) -> str:
    """sha256 over what the book's pages read besides their own code: ``results/``, the library and
    which grid folder they read (``grid``, default `grid_folder`)."""
    import hashlib

    h = hashlib.sha256(str(grid or grid_folder()).encode())
    files = sorted([*(root / "results").rglob("*"), *(root / "detox_utils").rglob("*.py")])
    for path in files:
        if path.is_file() and "notebooks" not in path.relative_to(root).parts[1:2]:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build(strict: bool = True, all_pages: bool = True, results: str | Path | None = None) -> int:
    """Build the book with jupyter-book 1.x (``-W -n``: every warning is an error), its pages reading
    the grid folder ``results`` (default: `grid_folder`, i.e. ``$DETOX_RESULTS`` or results/default).

    Pages execute through jupyter-cache, which only notices changes to a page's own code; so when the
    results, the library or the grid folder changed since the last build, the execution cache is
    cleared first.
    """
    import shutil

    env = dict(os.environ)
    if results is not None:
        env[RESULTS_ENV] = str(results)
    grid = grid_folder(env)  # a folder that does not exist fails here, not inside every page
    build_dir = REPO_ROOT / "book" / "_build"
    stamp = build_dir / ".inputs_sha256"
    fingerprint = inputs_fingerprint(grid=grid)
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(build_dir / ".jupyter_cache", ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO_ROOT),
           "--path-output", str(REPO_ROOT / "book")]
    if all_pages:
        cmd.append("--all")
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    log.info("running %s", " ".join(cmd))
    code = subprocess.call(cmd, cwd=REPO_ROOT, env=env)
    if code == 0:
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
    return code


_BAR = re.compile(r"^\s*(\S.*)?\d+%\|.*\|.*(it/s|s/it|\?it/s)|^\s*$")


def _is_progress_bar(output: dict) -> bool:
    """A stderr stream output whose every line is a tqdm bar (or blank)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = "".join(output.get("text", "")).replace("\r", "\n")
    return all(_BAR.search(line) for line in text.split("\n"))


def retitle_notebook(path: str | Path, title: str) -> Path:
    """Give an executed notebook its own page title: replace the first markdown cell's ``# ...``
    heading with ``# <title>`` (atomically), and drop stderr outputs that are only progress bars. Executed copies of one notebook (one per model) would
    otherwise share the template's heading, and the book's navigation could not tell them apart."""
    from .._io import atomic_write

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    if not title.strip() or "\n" in title:
        raise ValueError(f"title must be one non-empty line, got {title!r}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):  # progress bars (e.g. a first GGUF conversion) are not results
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if not _is_progress_bar(o)]
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        lines = "".join(cell["source"]).split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = f"# {title.strip()}"
                cell["source"] = "\n".join(lines)
                atomic_write(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
                return path
    raise ValueError(f"{path} has no markdown cell with a '# ' heading to retitle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils book")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the book strictly from the committed results")
    b.add_argument("--no-strict", action="store_true")
    b.add_argument("--results", default=None,
                   help=f"grid result folder the pages read (default: ${RESULTS_ENV}, else results/default)")
    r = sub.add_parser("retitle", help="set the page title (first '# ' heading) of an executed notebook")
    r.add_argument("notebook")
    r.add_argument("--title", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "retitle":
        retitle_notebook(args.notebook, args.title)
        return 0
    return build(strict=not args.no_strict, results=args.results)
