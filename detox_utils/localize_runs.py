"""The book's localization runs: ``notebooks/localize.ipynb`` executed with papermill on each packaged
model (``python -m detox_utils localize [--models M ...] [--out DIR]``, what ``make localization``
runs).

The models are those of the registry, `registry.PACKAGED` (in `packaged.available`'s order), so a
new packaged model gets its run, its notebook page (``_toc.yml`` globs
``results/localization/localize-*``) and its link on the Localization page without being named
anywhere else. A model whose result ``<out>/<model>__auroc-max.json`` exists is skipped: the
committed results make the command a no-op. Otherwise its executed notebook
``<out>/localize-<model>.ipynb`` is written atomically (executed into a temporary file, given its
page title, then renamed), so no half-written notebook ever stands under its name; a failed run
leaves its partly executed copy as ``<out>/failed-localize-<model>.ipynb`` (not a page of the book).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from ._io import REPO_ROOT, atomic_path

log = logging.getLogger(__name__)

NOTEBOOK = REPO_ROOT / "notebooks" / "localize.ipynb"
OUT = REPO_ROOT / "results" / "localization"  # the notebook's own default result_dir
RESULT_NAME = "{model}__auroc-max.json"  # the record the notebook writes with its defaults
NOTEBOOK_NAME = "localize-{model}.ipynb"
TITLE = "Localization notebook: {model}"


def packaged_models() -> list[str]:
    """The models the localization runs cover: every packaged model, in the registry's order."""
    from . import packaged

    return packaged.available()


def check_models(models: Iterable[str] | None) -> list[str]:
    """``models`` (default: `packaged_models`) in the given order without repeats; a name that is not
    a packaged model is refused with a ValueError naming the allowed ones."""
    allowed = packaged_models()
    if models is None:
        return allowed
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in allowed]
    if unknown or not models:
        raise ValueError(f"unknown packaged model(s) {unknown}; allowed: {', '.join(allowed)}"
                         if unknown else f"no model given; allowed: {', '.join(allowed)}")
    return models


def _execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """papermill, as ``papermill NOTEBOOK OUTPUT -p ... --cwd CWD --no-progress-bar`` runs it."""
    import papermill as pm

    pm.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False,
                        cwd=str(cwd))


def localize_one(model: str, out: str | Path = OUT, *, notebook: str | Path = NOTEBOOK,
                 execute: Callable[[Path, Path, dict, Path], None] = _execute) -> Path:
    """Execute the localization notebook on ``model`` into ``<out>/localize-<model>.ipynb`` (atomically)
    and give it its page title; returns the executed notebook's path."""
    from .report.build import retitle_notebook

    out, notebook = Path(out), Path(notebook)
    params = {"model": model, "progress": False}
    if out.resolve() != OUT.resolve():  # the default is the notebook's own result_dir
        params["result_dir"] = str(out.resolve())
    dest = out / NOTEBOOK_NAME.format(model=model)
    with atomic_path(dest) as tmp:
        try:
            execute(notebook, tmp, params, notebook.parent)
        except BaseException:
            if tmp.exists():  # keep the partly executed notebook for debugging
                tmp.replace(out / f"failed-{dest.name}")
            raise
        retitle_notebook(tmp, TITLE.format(model=model))
    return dest


def run_localizations(models: Iterable[str] | None = None, out: str | Path = OUT, *,
                      notebook: str | Path = NOTEBOOK,
                      execute: Callable[[Path, Path, dict, Path], None] = _execute) -> list[tuple[str, str]]:
    """Run the localization notebook on each of ``models`` (default: every packaged model) whose result
    is missing under ``out``; returns ``(model, "skipped" | "ok")`` in order. Stops at the first
    failing run (its exception propagates)."""
    models = check_models(models)
    out = Path(out)
    done = []
    for model in models:
        if (out / RESULT_NAME.format(model=model)).is_file():
            done.append((model, "skipped"))
            continue
        log.info("localizing %s", model)
        localize_one(model, out, notebook=notebook, execute=execute)
        if not (out / RESULT_NAME.format(model=model)).is_file():
            raise RuntimeError(f"the localization notebook on {model} finished without writing "
                               f"{out / RESULT_NAME.format(model=model)}")
        done.append((model, "ok"))
    return done
