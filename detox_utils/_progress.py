"""Progress bars: on for interactive use, switchable off for batch runs.

Every stage draws its bars with `tqdm` from here. `set_progress(False)` turns them all off in this
process, including transformers' and huggingface_hub's own bars ("Loading weights"), which is what a
papermill run wants: each bar update would otherwise be stored as a separate stderr output in the
executed notebook. Passing ``progress=False`` to a single call still works as before.
"""
from __future__ import annotations

import warnings

# Kernels without ipywidgets (papermill, the book) would print this into every page and notebook.
warnings.filterwarnings("ignore", message="IProgress not found")

from tqdm.auto import tqdm as _tqdm  # noqa: E402

_ENABLED = True


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of this process on or off (``enabled`` must be a bool)."""
    global _ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"progress must be True or False, got {enabled!r} ({type(enabled).__name__})")
    _ENABLED = enabled
    try:
        import transformers
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (transformers.utils.logging.enable_progress_bar if enabled
         else transformers.utils.logging.disable_progress_bar)()
        (enable_progress_bars if enabled else disable_progress_bars)()
    except ImportError:  # pragma: no cover - both are requirements
        pass


def tqdm(*args, disable: bool = False, **kwargs):
    """`tqdm.auto.tqdm`, also disabled when `set_progress(False)` was called."""
    return _tqdm(*args, disable=disable or not _ENABLED, **kwargs)
