"""Sphinx extension of this book (loaded through ``sphinx.local_extensions`` in ``_config.yml``).

Three things the configuration alone cannot do:

1. **Build stamp.** ``html.extra_footer`` in ``_config.yml`` may hold the placeholders ``@BUILD_DATE@``
   (UTC, or ``$SOURCE_DATE_EPOCH`` when set, for reproducible builds) and ``@BUILD_COMMIT@`` (the git
   commit the book was built from, with a note when tracked files had uncommitted changes). They are
   filled in once, when the build starts, so every page carries the same stamp.
2. **Scripts emitted twice.** Sphinx < 8.3 registers an inline script added after the builder started
   (``app.add_js_file(None, body=...)``) once with filename ``None`` and again with ``""``, so every page
   carried it twice; sphinx-thebe's ``const THEBE_JS_URL = ...`` then raised "SyntaxError: Identifier
   'THEBE_JS_URL' has already been declared" in the console of every page (sphinx-doc/sphinx#13402).
   Each page's script list is de-duplicated here, keeping the first of equal scripts.
3. **plotly.js from the book itself.** Pages holding a plotly figure (`detox_utils.interactive`) get
   ``_static/plotly-<version>.min.js`` in their head, and the bundle of the installed plotly package is
   written there when the build ends: the interactive figures work offline, with no CDN.
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path

DATE_PLACEHOLDER = "@BUILD_DATE@"
COMMIT_PLACEHOLDER = "@BUILD_COMMIT@"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_commit(root: Path) -> str:
    """``<12-hex commit>`` of the checkout at ``root``, ``... + uncommitted changes`` when tracked files
    differ from it, or a note when ``root`` is not a git checkout."""
    sha = _git(["rev-parse", "--short=12", "HEAD"], root)
    if not sha:
        return "unknown (not built from a git checkout)"
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], root)
    return f"{sha} + uncommitted changes" if dirty else sha


def build_date() -> str:
    """The build time as ``YYYY-MM-DD HH:MM UTC`` (``$SOURCE_DATE_EPOCH`` when set)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (_dt.datetime.fromtimestamp(float(epoch), tz=_dt.timezone.utc) if epoch
            else _dt.datetime.now(tz=_dt.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")


def fill_build_stamp(app, config) -> None:
    options = config.html_theme_options
    footer = options.get("extra_footer") if isinstance(options, dict) else None
    if not footer or (DATE_PLACEHOLDER not in footer and COMMIT_PLACEHOLDER not in footer):
        return
    root = Path(app.srcdir)
    options["extra_footer"] = (footer.replace(DATE_PLACEHOLDER, build_date())
                               .replace(COMMIT_PLACEHOLDER, build_commit(root)))


def _script_key(js) -> tuple:
    filename = getattr(js, "filename", js)
    attributes = getattr(js, "attributes", {}) or {}
    return (filename or "", getattr(js, "priority", 500), tuple(sorted(attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def add_plotly(app, pagename, templatename, context, doctree) -> None:
    if "plotly-graph-div" in (context.get("body") or ""):
        from detox_utils import interactive

        app.add_js_file(interactive.PLOTLY_JS)


def write_plotly(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        from detox_utils import interactive

        interactive.write_plotly_js(Path(app.outdir) / "_static")


def setup(app):
    app.connect("config-inited", fill_build_stamp)
    app.connect("html-page-context", add_plotly)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("build-finished", write_plotly)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
