"""Headless-Chromium screenshots of the built book, to check its pages as a reader sees them.

    python -m detox_utils.screenshots OUTDIR                    # every page of _toc.yml, top 2000 px
    python -m detox_utils.screenshots OUTDIR --full             # whole pages, cut into 2000 px tiles
    python -m detox_utils.screenshots OUTDIR --pages book/evaluators book/methods

Pages are named as in ``_toc.yml`` (``book/evaluators``); the HTML comes from ``book/_build/html``
(``--html`` to change it). Each page becomes ``OUTDIR/<page>.png`` (slashes as ``__``); with ``--full``
the page is shot up to 20000 px tall, the empty space below it cut off, and the rest cut into tiles
``<page>.png``, ``<page>.2.png``, ... of ``--height`` pixels each. Chromium runs with a fresh profile, no
network services and a JavaScript time budget so that MathJax has typeset before the shot.

Needs the Debian ``chromium`` package (``apt-get install -y chromium``); without it the command logs
what to install and exits with status 0, writing nothing, so it can sit in scripts that run anywhere.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ._io import REPO_ROOT, atomic_path

log = logging.getLogger(__name__)

HTML_DIR = REPO_ROOT / "book" / "_build" / "html"
TOC_FILE = REPO_ROOT / "_toc.yml"
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=8000",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


# the source suffixes of the book's pages (Sphinx's .rst, myst-nb's .md and .ipynb)
SOURCE_SUFFIXES: tuple[str, ...] = (".md", ".ipynb", ".rst")


def glob_pages(pattern: str, root: str | Path) -> list[str]:
    """The pages a ``glob:`` entry of ``_toc.yml`` stands for, as sphinx-external-toc expands it: the
    documents under ``root`` (files with a source suffix, named without it) whose name matches
    ``pattern`` by Sphinx's rule (``*`` and ``?`` stop at ``/``, ``**`` does not), sorted by name.
    (The build's ``exclude_patterns`` are not applied.)"""
    from sphinx.util.matching import patfilter

    root = Path(root)
    parts = pattern.split("/")
    fixed = 0  # the leading folders without a wildcard: only what is below them can match
    while fixed < len(parts) - 1 and not any(c in parts[fixed] for c in "*?["):
        fixed += 1
    base, rest = root.joinpath(*parts[:fixed]), parts[fixed:]
    found = base.rglob("*") if any("**" in part for part in rest) else base.glob("/".join(["*"] * len(rest)))
    docs = {p.relative_to(root).as_posix().removesuffix(p.suffix) for p in found
            if p.suffix in SOURCE_SUFFIXES and p.is_file()}
    return sorted(patfilter(docs, pattern))


def entry_pages(entry: dict, root: str | Path, globbed: set[str]) -> list[str]:
    """The pages of one ``file:`` or ``glob:`` entry of ``_toc.yml`` (without suffix). As in
    sphinx-external-toc, a glob leaves out the pages in ``globbed``: the document whose toctree holds
    the entry and what earlier globs of that document's toctrees matched; its matches are added to it."""
    if "file" in entry:
        return [str(entry["file"]).removesuffix(".md").removesuffix(".ipynb")]
    if "glob" in entry:
        found = [p for p in glob_pages(str(entry["glob"]), root) if p not in globbed]
        globbed.update(found)
        return found
    return []


def toc_pages(toc: str | Path = TOC_FILE) -> list[str]:
    """Every page of a jupyter-book ``_toc.yml`` (root first, then chapters and sections in order,
    each ``glob:`` entry expanded by `glob_pages` in the toc's folder), as paths without suffix, e.g.
    ``["book/intro", "book/methods", ...]``."""
    toc = Path(toc)
    if not toc.is_file():
        raise FileNotFoundError(f"table of contents {toc} not found")
    spec = yaml.safe_load(toc.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or "root" not in spec:
        raise ValueError(f"{toc} has no 'root' entry; is it a jupyter-book 1.x _toc.yml?")
    pages = [str(spec["root"]).removesuffix(".md").removesuffix(".ipynb")]

    def walk(entries: list, globbed: set[str]) -> None:
        for entry in entries or []:
            found = entry_pages(entry, toc.parent, globbed)
            pages.extend(found)
            children = [e for key in ("chapters", "sections", "parts") for e in entry.get(key) or []]
            # a file's children are its own toctrees; a part's belong to the document holding it
            walk(children, {found[0]} if "file" in entry else globbed)

    walk(spec.get("parts", []) + spec.get("chapters", []) + spec.get("sections", []), {pages[0]})
    return pages


FULL_HEIGHT = 20000
SIDEBAR_SHARE = 0.25  # left part of a shot ignored when finding where the page's content ends
BLANK_GAP = 800  # this many blank rows end a page's content
MARGIN = 40


def page_file(page: str, html_dir: str | Path = HTML_DIR) -> Path:
    """The built HTML file of ``page`` (``book/methods``)."""
    path = Path(html_dir) / f"{page}.html"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the book first (python -m detox_utils book build)")
    return path


def screenshot(page: str, dest: str | Path, html_dir: str | Path = HTML_DIR, width: int = 1280,
               height: int = 2000, chromium: str | None = None, timeout: float = 120.0) -> Path:
    """Screenshot of the top ``width`` x ``height`` pixels of ``page``."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 20000:
            raise ValueError(f"{name} must be an int between 200 and 20000 pixels, got {value!r}")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium found on PATH; install it with `apt-get install -y chromium`")
    url = page_file(page, html_dir).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="detox-chromium-") as profile, atomic_path(dest) as tmp:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={tmp}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or tmp.stat().st_size == 0:
            raise RuntimeError(f"chromium failed on {url} (exit {done.returncode}): {done.stderr[-2000:]}")
    log.info("%s -> %s", page, dest)
    return Path(dest)


def _content_bottom(rgb) -> int:
    """Row where a tall shot's content ends: the start of the first blank stretch of `BLANK_GAP` rows
    (the theme pins its footer to the bottom of the window, far below a short page), else the last
    non-blank row. Only the part right of the navigation sidebar is looked at (its border runs the
    whole height)."""
    import numpy as np

    content = np.asarray(rgb)[:, int(rgb.width * SIDEBAR_SHARE):]
    colours, counts = np.unique(content[::16, ::16].reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    filled = (content != background).any(axis=(1, 2))
    rows = np.flatnonzero(filled)
    if rows.size == 0:
        return rgb.height
    gaps = np.flatnonzero(np.diff(rows) > BLANK_GAP)
    last = rows[gaps[0]] if gaps.size else rows[-1]
    return int(min(last + 1 + MARGIN, rgb.height))


def tile(shot: str | Path, height: int) -> list[Path]:
    """Cut the blank space below a tall screenshot's content and split the rest into ``height``-pixel
    tiles: ``shot`` keeps the first, ``<stem>.2.png``, ``<stem>.3.png``, ... hold the others."""
    from PIL import Image

    shot = Path(shot)
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
    bottom = _content_bottom(rgb)
    paths = []
    for i, top in enumerate(range(0, bottom, height)):
        dest = shot if i == 0 else shot.with_name(f"{shot.stem}.{i + 1}.png")
        with atomic_path(dest) as tmp:
            rgb.crop((0, top, rgb.width, min(top + height, bottom))).save(tmp, format="PNG")
        paths.append(dest)
    return paths


def shoot_all(out_dir: str | Path, pages: list[str] | None = None, html_dir: str | Path = HTML_DIR,
              width: int = 1280, height: int = 2000, full: bool = False) -> list[Path]:
    """Screenshots of ``pages`` (default: every page in ``_toc.yml`` that was built) into ``out_dir``;
    ``full``: whole pages, cut into tiles of ``height`` pixels."""
    chromium = find_chromium()
    if chromium is None:
        log.warning("skipping screenshots: no chromium on PATH "
                    "(install it with `apt-get install -y chromium`)")
        return []
    if pages is None:
        pages = [p for p in toc_pages() if (Path(html_dir) / f"{p}.html").is_file()]
        if not pages:
            raise FileNotFoundError(
                f"no built page of {TOC_FILE.name} under {html_dir}; build the book first")
    out_dir = Path(out_dir)
    shots = []
    for page in pages:
        dest = out_dir / (page.replace("/", "__") + ".png")
        if full:
            shots += tile(screenshot(page, dest, html_dir, width, FULL_HEIGHT, chromium), height)
        else:
            shots.append(screenshot(page, dest, html_dir, width, height, chromium))
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils screenshots",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for the PNG files")
    parser.add_argument("--pages", nargs="+", help="pages as in _toc.yml, e.g. book/methods")
    parser.add_argument("--html", default=str(HTML_DIR), help="the built HTML folder (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000, help="shot (or, with --full, tile) height")
    parser.add_argument("--full", action="store_true", help="whole pages, cut into tiles")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shots = shoot_all(args.out_dir, args.pages, args.html, args.width, args.height, args.full)
    log.info("%d screenshot(s) in %s", len(shots), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
