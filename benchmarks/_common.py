"""What several benchmark scripts share: the machine's load line and a scratch cache folder."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def load() -> str:
    """The load average, printed at a benchmark's start and end: a busy machine shows here."""
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def scratch_cache() -> Iterator[Path]:
    """A temporary folder set as ``DETOX_CACHE_DIR`` for the block (restored after), whose ``models``
    entry links to the real model cache: the dequantized models are read, fitted methods, activations
    and capability results are computed afresh and nothing is written to the real cache."""
    from detox_utils._io import CACHE_ENV, cache_root

    real_models = cache_root() / "models"
    before = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        if real_models.is_dir():
            (cache / "models").symlink_to(real_models)
        os.environ[CACHE_ENV] = str(cache)
        try:
            yield Path(tmp)
        finally:
            if before is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = before
