"""Building the book once per test session, for tests/test_book.py and tests/test_browser.py (the
`built_book` fixture of conftest.py): a strict build (`jupyter-book build --all -W -n --keep-going`, as
`python -m detox_utils book build` does) into a temporary folder, with a fresh execution cache so
that every notebook page really runs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from detox_utils import screenshots
from detox_utils._io import REPO_ROOT

BUILD_TIMEOUT_S = 900


def has_source(page: str) -> bool:
    """Whether a page of `_toc.yml` (``book/methods``) has its ``.md`` or ``.ipynb`` file."""
    return any((REPO_ROOT / f"{page.removesuffix('.md')}{ext}").is_file() for ext in (".md", ".ipynb"))


def source_tree(tmp: Path) -> Path:
    """The folder to build: the repository itself when every page of `_toc.yml` exists; otherwise a
    copy of it with a one-line stub for each missing page, so that what exists is checked while the
    book is being written (`test_every_page_of_the_real_toc_has_a_source` reports the missing ones)."""
    missing = [p for p in screenshots.toc_pages() if not has_source(p)]
    if not missing:
        return REPO_ROOT
    copy = tmp / "source"
    shutil.copytree(REPO_ROOT, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "_build", "results", ".pytest_cache"))
    (copy / "results").symlink_to(REPO_ROOT / "results", target_is_directory=True)
    for page in missing:
        (copy / f"{page}.md").write_text(f"# {Path(page).name} (not written yet)\n", encoding="utf-8")
    return copy


def build_book(tmp: Path) -> tuple[Path, str]:
    """Build the book strictly into ``tmp``; returns (html folder, build log). Fails the test that
    asked for it, with the end of the log, when the build fails."""
    import pytest

    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("execute", {})["cache"] = str(tmp / "jupyter_cache")  # fresh: every page runs
    local = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in local.items():  # relative to the repository, not to the copied config
        local[name] = str(REPO_ROOT / folder)
    (tmp / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    source = source_tree(tmp)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(source),
           "--path-output", str(tmp), "--config", str(tmp / "_config.yml"),
           "--all", "-W", "-n", "--keep-going"]
    done = subprocess.run(cmd, cwd=source, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          check=False)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"strict book build failed (exit {done.returncode}):\n{log[-6000:]}")
    return tmp / "_build" / "html", log
