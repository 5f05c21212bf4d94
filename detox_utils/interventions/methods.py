"""The `METHODS` table (name -> class), `fit` (a method by name, fitted on toxic and neutral texts) and
`load` (a method written by ``Method.save``)."""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__, registry
from .._io import check_texts, stable_hash
from ..config import METHOD_PARAMS
from .base import FORMAT, FORMAT_VERSION, Method


def _implementation(spec: registry.MethodSpec) -> type[Method]:
    module, _, cls = spec.impl.partition(":")
    impl = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    if impl.name != spec.name:
        raise TypeError(f"registry method {spec.name!r} names {spec.impl}, whose name is {impl.name!r}")
    return impl


# name -> class, in the registry's order (`detox_utils.registry.METHODS` declares each method once)
METHODS: dict[str, type[Method]] = {name: _implementation(spec) for name, spec in registry.METHODS.items()}


def fit(method: str, lm: Any, toxic_texts: Sequence[str], neutral_texts: Sequence[str], *,
        batch_size: int = 16, progress: bool = True, **params: Any) -> Method:
    """Fit ``method`` (a name in `METHODS`) on ``lm`` (a LoadedModel) from toxic and neutral texts.

    ``params`` are the method's free parameters (defaults: `detox_utils.config.METHOD_PARAMS`). Each
    class's ``_fit`` holds its recipe; what each records (via `detox_utils.activations` and
    `detox_utils.localization`):

    * aura, det0, damp: responses max-pooled over the first `AUROC_MAX_LENGTH` (128) tokens at every MLP
      linear output (``lm.arch.linear_sites()``), AUROC of each unit;
    * meow2x: mean-pooled ``post`` responses, their mean difference toxic - neutral;
    * trne: contrastive gradient scores per layer, then the token mean of the ``post`` keys (toxic and
      neutral) and their neutral second moment in the chosen layers.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")
    unknown = sorted(set(params) - set(METHOD_PARAMS[method]))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {method!r}; allowed: {sorted(METHOD_PARAMS[method])}")
    params = {**METHOD_PARAMS[method], **params}
    toxic = check_texts(toxic_texts, "toxic_texts")
    neutral = check_texts(neutral_texts, "neutral_texts")
    prov = {"n_toxic": len(toxic), "n_neutral": len(neutral), "texts_hash": stable_hash([toxic, neutral]),
            "detox_utils": __version__}
    return METHODS[method]._fit(lm, toxic, neutral, params, prov,
                                {"batch_size": batch_size, "progress": progress})


def load(path: str | Path, lm: Any | None = None) -> Method:
    """Read a method written by ``Method.save``; with ``lm`` (a LoadedModel), also check that it was
    fitted on that model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no intervention file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not an intervention file written by Method.save ({e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not an intervention file written by Method.save (no {FORMAT!r} header)")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {blob.get('version')!r}; this code reads {FORMAT_VERSION}")
    if blob.get("method") not in METHODS:
        raise ValueError(f"{path} holds unknown method {blob.get('method')!r}; known: {list(METHODS)}")
    common = {k: blob[k] for k in ("model_name", "family", "params", "provenance")}
    method = METHODS[blob["method"]]._from_saved(common, blob["tensors"], blob["meta"])
    if lm is not None:
        method._check_model(lm)
    return method
