"""Recording MLP unit responses: pooled per text, batched, cached on disk, stopped early.

What this module holds:

- `trace`: a baukit-style context manager that hooks named modules (their output, or their input via a
  forward pre-hook), hands each tensor to a callback or keeps it, can stop the forward pass once every
  hooked module has fired, and removes every hook in ``finally``.
- `batches`: texts tokenized once, sorted by length (longest first) and cut into padded `Batch` es whose
  ``position_ids`` are right for left *and* right padding.
- `pool`: max / mean / last over the pooled tokens of a ``[batch, tokens, units]`` tensor.
- `record`: each unit's pooled response at the MLP sites of `detox_utils.archs` (``pre``, ``up``,
  ``post``, ``out``), ``{site: [n_texts, n_layers, units]}`` on CPU in float32. Pooling happens inside the
  hooks, batch by batch, so token-level activations of all texts are never held; the forward pass stops
  after the last module that is needed (no final norm, no unembedding).
- The cache: one folder per site under ``$DETOX_CACHE_DIR/activations``, keyed by the model name, its
  `weight_fingerprint` (so an edited model never gets the unedited model's activations), the tokenizer,
  the sha256 of the texts, pooling, ``max_length``, layers, ``skip_special`` and `CODE_VERSION`; written
  atomically in chunks of `CHUNK_TEXTS` texts, so an interrupted run resumes from its last whole chunk.
  Each chunk's sha256 is recorded beside it when it is written and checked, with its shape and dtype,
  whenever it is read; a chunk that fails (or, from older code, has no checksum) is recorded again.
  A model carrying hooks (`has_hooks`: an intervention applied at inference) bypasses the cache.
- `moments`: token-level mean and uncentered second moment of one site (TRNE's key covariance).

Pooled tokens: every non-pad token, except the special tokens the tokenizer adds (a BOS token) when
``skip_special=True`` (the default). A BOS token sits at position 0 of every text, so its activations are
the same for every text: counting it would put a text-independent floor under every max and make
units that fire on BOS look identical across texts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import operator
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping, Sequence

import torch

from . import _io
from ._progress import tqdm

log = logging.getLogger(__name__)

Pooling = Literal["max", "mean", "last"]
POOLINGS: tuple[str, ...] = ("max", "mean", "last")

# Bump when recorded values could change (pooling, tokenization, masking): old caches are then unused.
CODE_VERSION = 1
# Texts per cache chunk (in length-sorted order): the unit of resumption.
CHUNK_TEXTS = 512


class _StopForward(Exception):
    """Raised by a `trace` hook to end the forward pass once every traced module has fired."""


# --------------------------------------------------------------------------------------------------
# hooks


class Trace:
    """What a `trace` kept from the last forward pass: ``outputs[name]`` and ``inputs[name]``
    (detached), for the names it traces without a callback."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}


HookFn = Callable[[str, str, torch.Tensor], None]


@contextlib.contextmanager
def trace(
    model: torch.nn.Module,
    outputs: Sequence[str] = (),
    inputs: Sequence[str] = (),
    *,
    fn: HookFn | None = None,
    stop: bool = False,
) -> Iterator[Trace]:
    """Hook the modules named in ``outputs`` (their output) and ``inputs`` (their first positional
    input, via a forward pre-hook) for the duration of the ``with`` block.

    ``fn(name, kind, tensor)`` (``kind`` is ``"output"`` or ``"input"``) is called with each tensor;
    without ``fn`` the yielded `Trace` keeps the detached tensors of the last forward. A module returning
    a tuple contributes its first element. With ``stop=True`` the forward pass is ended (by an exception
    the ``with`` block swallows) as soon as every hooked point has fired, so later layers never run.
    Every hook is removed on exit, also after an exception.
    """
    outputs, inputs = list(outputs), list(inputs)
    if not outputs and not inputs:
        raise ValueError("trace needs at least one module name in outputs or inputs")
    for names in (outputs, inputs):
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate module names in {names}")
    known = dict(model.named_modules())
    missing = [n for n in outputs + inputs if n not in known]
    if missing:
        raise ValueError(f"no module named {missing} in {type(model).__name__}; see model.named_modules()")

    result = Trace()
    total = len(outputs) + len(inputs)
    fired: set[tuple[str, str]] = set()

    def seen(name: str, kind: str, tensor: torch.Tensor) -> None:
        if fn is None:
            (result.outputs if kind == "output" else result.inputs)[name] = tensor.detach()
        else:
            fn(name, kind, tensor)
        if stop:
            fired.add((name, kind))
            if len(fired) == total:
                fired.clear()
                raise _StopForward

    def output_hook(name: str):
        def hook(module, args, output):
            seen(name, "output", output[0] if isinstance(output, tuple) else output)

        return hook

    def input_hook(name: str):
        def hook(module, args):
            if not args:
                raise ValueError(f"module {name} was called without a positional input to trace")
            seen(name, "input", args[0])

        return hook

    handles = []
    try:
        for name in outputs:
            handles.append(known[name].register_forward_hook(output_hook(name)))
        for name in inputs:
            handles.append(known[name].register_forward_pre_hook(input_hook(name)))
        try:
            yield result
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()


def has_hooks(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` (or torch globally) carries a forward hook or pre-hook."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------------
# tokenization and batches


@dataclass(frozen=True)
class Batch:
    """One padded batch. ``index[i]`` is the position of row ``i`` in the caller's list of texts.

    Shapes: ``index [b]``, ``input_ids``, ``attention_mask``, ``position_ids`` and ``token_mask``
    ``[b, t]``. ``attention_mask`` is 1 on every real token; ``token_mask`` is True on the tokens to pool
    over (real tokens, minus added special tokens when ``skip_special``). ``position_ids`` count real
    tokens from 0, so left-padded rows see the same positions as unpadded ones.
    """

    index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    token_mask: torch.Tensor

    def model_inputs(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Keyword arguments for a transformers causal LM forward (no KV cache)."""
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
            "use_cache": False,
        }


@dataclass(frozen=True)
class _Encoded:
    ids: list[list[int]]
    special: list[list[int]]
    order: list[int]  # text indices, longest first


def _check_positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _encode(tokenizer, texts: list[str], max_length: int, skip_special: bool,
            min_tokens: int = 1) -> _Encoded:
    enc = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_attention_mask=False,
    )
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    counted = [len(s) - sum(s) if skip_special else len(s) for s in special]
    short = [i for i, c in enumerate(counted) if c < min_tokens]
    if short:
        raise ValueError(
            f"texts {short[:5]} have fewer than {min_tokens} token(s) to use after tokenization "
            f"(skip_special={skip_special}); drop empty texts first"
        )
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    return _Encoded(ids=ids, special=special, order=order)


def _collate(enc: _Encoded, index: Sequence[int], pad_id: int, side: str, skip_special: bool) -> Batch:
    width = max(len(enc.ids[i]) for i in index)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(index), width), dtype=torch.long)
    special = torch.zeros((len(index), width), dtype=torch.bool)
    for row, i in enumerate(index):
        n = len(enc.ids[i])
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        input_ids[row, cols] = torch.tensor(enc.ids[i], dtype=torch.long)
        attention[row, cols] = 1
        special[row, cols] = torch.tensor(enc.special[i], dtype=torch.bool)
    token_mask = attention.bool() & ~special if skip_special else attention.bool()
    return Batch(
        index=torch.tensor(list(index), dtype=torch.long),
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        token_mask=token_mask,
    )


def _padding(tokenizer) -> tuple[int, str]:
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; models.load sets one (tokenizer.pad_token = ...)")
    side = tokenizer.padding_side
    if side not in ("left", "right"):
        raise ValueError(f"tokenizer.padding_side must be 'left' or 'right', got {side!r}")
    return tokenizer.pad_token_id, side


def batches(
    lm,
    texts: Sequence[str],
    batch_size: int = 16,
    max_length: int = 128,
    skip_special: bool = True,
    min_tokens: int = 1,
) -> list[Batch]:
    """``texts`` tokenized (truncated to ``max_length`` tokens), sorted longest first and cut into padded
    batches of ``batch_size`` on the tokenizer's padding side. Raises ValueError for a text with fewer
    than ``min_tokens`` tokens to pool over."""
    texts = _io.check_texts(texts)
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(max_length, "max_length")
    pad_id, side = _padding(lm.tokenizer)
    enc = _encode(lm.tokenizer, texts, max_length, skip_special, min_tokens)
    return [
        _collate(enc, enc.order[i : i + batch_size], pad_id, side, skip_special)
        for i in range(0, len(texts), batch_size)
    ]


# --------------------------------------------------------------------------------------------------
# pooling


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool ``hidden [b, t, u]`` over the tokens where ``mask [b, t]`` is True -> ``[b, u]`` float32.

    ``max``: the largest value; ``mean``: the average (accumulated in float32 at least); ``last``: the
    value at the last masked token (the last real token, whatever the padding side). Every row needs at
    least one masked token. Masked-out positions are never read, so NaN or inf there cannot leak in.
    When each row's masked tokens are one contiguous run (padding on either side, a BOS token skipped),
    rows are pooled from views of that run, without copying ``hidden``.
    """
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [b, t, u] and mask [b, t], got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.to(device=hidden.device, dtype=torch.bool)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).amax(dim=1)
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    count = mask.sum(dim=1)
    first = last + 1 - count
    if torch.equal(mask, (positions >= first[:, None]) & (positions <= last[:, None])):
        a, b = int(first.min()), int(last.max())
        if how == "max" and a == int(first.max()) and b == int(last.min()):  # one run for all rows
            return hidden[:, a : b + 1].amax(dim=1).float()  # (a max is exact in any order)
        runs = [hidden[i, a : b + 1] for i, (a, b) in enumerate(zip(first.tolist(), last.tolist()))]
        if how == "max":
            return torch.stack([run.amax(dim=0) for run in runs]).float()
        return torch.stack([run.sum(dim=0, dtype=accumulate) / len(run) for run in runs]).float()
    if how == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(dim=1).float()
    total = torch.where(mask[..., None], hidden, 0.0).sum(dim=1, dtype=accumulate)
    return (total / count[:, None]).float()


# --------------------------------------------------------------------------------------------------
# recording


def _check_sites(lm, sites: Sequence[str] | str) -> tuple[str, ...]:
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites:
        raise ValueError(f"sites is empty; allowed: {list(lm.arch.sites)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"duplicate sites in {sites}")
    for site in sites:
        lm.arch.capture(site)  # raises ValueError naming the allowed sites
    return sites


def _check_layers(lm, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Layer indices as plain ints (numpy / torch integers accepted), each in range, no duplicates."""
    n = lm.n_layers
    if layers is None:
        return tuple(range(n))
    if isinstance(layers, torch.Tensor):
        layers = layers.tolist()
    checked, bad = [], []
    for layer in layers:
        try:
            index = operator.index(layer)
        except TypeError:
            index = None
        if index is None or isinstance(layer, bool) or not 0 <= index < n:
            bad.append(layer)
        else:
            checked.append(index)
    if bad or not checked:
        raise ValueError(f"layers must be a non-empty list of ints in [0, {n}); bad: {bad or 'empty'}")
    if len(set(checked)) != len(checked):
        raise ValueError(f"duplicate layers in {checked}")
    return tuple(checked)


def _site_width(lm, site: str) -> int:
    return lm.d_model if lm.arch.sites[site].width == "d_model" else lm.d_mlp


def weight_fingerprint(model: torch.nn.Module) -> str:
    """An exact, cheap fingerprint of every parameter: the wrapping sum of its bytes read as 64-bit
    integers (plus any leftover bytes), per parameter; about 0.1 s for a 270M-parameter model.

    Any in-place edit of a weight (a folded intervention) changes it, so cached activations of the
    unedited model are never served for an edited one.
    """
    sums = []
    for name, p in model.named_parameters():
        raw = p.detach().contiguous().view(-1).view(torch.uint8)
        whole = raw.numel() // 8 * 8
        sums.append((name, int(raw[:whole].view(torch.int64).sum()), int(raw[whole:].sum())))
    return _io.stable_hash(sums, length=32)


def _texts_hash(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Point:
    """One hooked tensor: module ``name`` (its ``kind``) is ``site`` at column ``column`` of the result."""

    site: str
    column: int


def _points(lm, sites: tuple[str, ...], layers: tuple[int, ...]) -> dict[tuple[str, str], _Point]:
    return {
        (lm.arch.module_name(layer, site), lm.arch.capture(site)): _Point(site, column)
        for site in sites
        for column, layer in enumerate(layers)
    }


def _hook_names(points: Mapping[tuple[str, str], object]) -> tuple[list[str], list[str]]:
    """The module names to hook on their output and on their input."""
    outputs = [name for name, kind in points if kind == "output"]
    return outputs, [name for name, kind in points if kind == "input"]


def _run_stopped(model: torch.nn.Module, batch: Batch, device) -> None:
    try:
        model(**batch.model_inputs(device))
    except _StopForward:
        return
    raise RuntimeError("the forward pass ended without reaching every hooked module")


def _record_chunk(lm, enc: _Encoded, index: list[int], sites, layers, pooling: Pooling, batch_size: int,
                  skip_special: bool, bar) -> dict[str, torch.Tensor]:
    """Pooled responses of the texts ``index`` (in that order): ``{site: [len(index), L, units]}``."""
    pad_id, side = _padding(lm.tokenizer)
    out = {site: torch.empty(len(index), len(layers), _site_width(lm, site)) for site in sites}
    points = _points(lm, sites, layers)
    current: dict = {}  # the batch being run and its rows in ``out``

    def fn(name: str, kind: str, tensor: torch.Tensor) -> None:
        point = points[(name, kind)]
        pooled = pool(tensor, current["batch"].token_mask, pooling)
        out[point.site][current["rows"], point.column] = pooled.cpu()

    with torch.inference_mode(), trace(lm.model, *_hook_names(points), fn=fn, stop=True):
        for b in range(0, len(index), batch_size):
            batch = _collate(enc, index[b : b + batch_size], pad_id, side, skip_special)
            current.update(batch=batch, rows=slice(b, b + len(batch.index)))
            _run_stopped(lm.model, batch, lm.device)
            bar.update(1)
    return out


def record(
    lm,
    texts: Sequence[str],
    sites: Sequence[str] | str = ("post",),
    pooling: Pooling = "max",
    batch_size: int = 16,
    max_length: int = 128,
    layers: Sequence[int] | None = None,
    cache: bool = True,
    progress: bool = True,
    skip_special: bool = True,
) -> dict[str, torch.Tensor]:
    """Each MLP unit's response to each text, pooled over its tokens.

    Args:
        lm: a `detox_utils.models.LoadedModel`.
        texts: the texts (each truncated to ``max_length`` tokens).
        sites: sites of ``lm.arch`` (``pre``, ``up`` for GLU models, ``post``, ``out``).
        pooling: ``max``, ``mean`` or ``last`` over the pooled tokens (see the module docstring).
        layers: layer indices to record (default all), in the order given.
        cache: read and write the on-disk cache (skipped when the model carries hooks, e.g. an
            intervention applied as a hook, since its activations are not the model's own).
        skip_special: leave tokenizer-added special tokens (BOS) out of the pooling.

    Returns:
        ``{site: [n_texts, len(layers), units]}`` float32 on CPU, rows in the order of ``texts``.
    """
    texts = _io.check_texts(texts)
    sites = _check_sites(lm, sites)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(max_length, "max_length")
    layers = _check_layers(lm, layers)
    _padding(lm.tokenizer)
    enc = _encode(lm.tokenizer, texts, max_length, skip_special)
    if cache and has_hooks(lm.model):
        log.warning("the model carries forward hooks (an intervention?): not using the activation cache")
        cache = False
    folders = _cache_folders(lm, texts, sites, pooling, max_length, layers, skip_special) if cache else {}

    n = len(texts)
    result = {site: torch.empty(n, len(layers), _site_width(lm, site)) for site in sites}
    chunks = [enc.order[s : s + CHUNK_TEXTS] for s in range(0, n, CHUNK_TEXTS)]
    total = sum(-(-len(index) // batch_size) for index in chunks)
    with tqdm(total=total, desc=f"record {lm.name}", disable=not progress, unit="batch") as bar:
        for chunk, index in enumerate(chunks):
            paths = {site: _chunk_path(folders[site], chunk) for site in folders}
            cached = {site: _read_chunk(paths[site], (len(index), len(layers), _site_width(lm, site)))
                      for site in paths}
            todo = tuple(site for site in sites if cached.get(site) is None)
            for site in sites:
                if site not in todo:
                    result[site][index] = cached.pop(site)
            if not todo:
                bar.update(-(-len(index) // batch_size))
                continue
            fresh = _record_chunk(lm, enc, index, todo, layers, pooling, batch_size, skip_special, bar)
            for site, values in fresh.items():
                result[site][index] = values
                if cache:
                    with _io.atomic_path(paths[site]) as tmp:
                        torch.save(values, tmp)
                    _io.write_checksum(paths[site])
    return result


def _chunk_path(folder, chunk: int):
    return folder / f"chunk_{chunk:05d}.pt"


def _read_chunk(path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A cached chunk, verified: its sha256 and size as recorded when it was written (`_io.write_checksum`),
    then a float32 tensor of exactly ``shape``. None when it is missing, has no checksum (written by older
    code) or fails a check: it is then recorded again and rewritten; a damaged one is logged with its file
    and the command that clears the cache. A damaged file never becomes numbers."""
    if not path.exists():
        return None
    try:
        if not _io.verify_checksum(path, "activations"):
            log.info("activation chunk %s has no checksum (older cache): recording it again", path)
            return None
        values = torch.load(path, weights_only=True)
        if not isinstance(values, torch.Tensor):
            raise _io.CacheIntegrityError(path, "activations", f"it holds a {type(values).__name__}, "
                                                               "not a tensor")
        if tuple(values.shape) != tuple(shape) or values.dtype != torch.float32:
            raise _io.CacheIntegrityError(path, "activations", f"a {values.dtype} tensor of shape "
                                          f"{tuple(values.shape)}, expected float32 {tuple(shape)}")
    except _io.CacheIntegrityError as err:
        log.warning("%s. Recording this chunk again.", err)
        return None
    except Exception as err:  # noqa: BLE001 - unreadable (truncated, not a torch file): record it again
        log.warning("activation chunk %s is unreadable (%s: %s); recording it again. `%s` empties the "
                    "activation cache.", path, type(err).__name__, err, _io.clear_command("activations"))
        return None
    return values


def _cache_folders(lm, texts, sites, pooling, max_length, layers, skip_special) -> dict[str, object]:
    common = {
        "model": lm.name,
        "model_type": lm.model.config.model_type,
        "weights": weight_fingerprint(lm.model),
        "tokenizer": [type(lm.tokenizer).__name__, lm.tokenizer.name_or_path, len(lm.tokenizer)],
        "texts_sha256": _texts_hash(texts),
        "n_texts": len(texts),
        "pooling": pooling,
        "max_length": max_length,
        "layers": list(layers),
        "skip_special": skip_special,
        "chunk_texts": CHUNK_TEXTS,
        "code_version": CODE_VERSION,
    }
    folders = {}
    for site in sites:
        key = {**common, "site": site}
        folder = _io.cache_dir("activations", f"{lm.name.replace('/', '--')}-{site}-{_io.stable_hash(key)}")
        meta = folder / "key.json"
        if not meta.exists():
            _io.atomic_write_json(meta, key)
        folders[site] = folder
    return folders


# --------------------------------------------------------------------------------------------------
# token-level moments


def moments(
    lm,
    texts: Sequence[str],
    site: str,
    layers: Sequence[int] | None = None,
    max_length: int = 128,
    batch_size: int = 16,
    skip_special: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level mean and uncentered second moment of ``site`` over every pooled token of ``texts``.

    Returns ``(mean [L, u], second [L, u, u])`` in float64 on CPU, ``second[l] = E[x x^T]`` over tokens
    (``L = len(layers)``). The covariance is ``second - mean[:, :, None] * mean[:, None, :]``. Each batch's
    ``x^T x`` is computed in float32 (or the model's dtype, if wider) and accumulated in float64. Memory:
    ``8 L u^2`` bytes (about 32 MB per layer at u = 2048), so ask only for the layers you need.
    """
    texts = _io.check_texts(texts)
    (site,) = _check_sites(lm, (site,))
    layers = _check_layers(lm, layers)
    width = _site_width(lm, site)
    total = torch.zeros(len(layers), width, dtype=torch.float64)
    second = torch.zeros(len(layers), width, width, dtype=torch.float64)
    points = _points(lm, (site,), layers)
    current: dict = {}  # the batch being run

    def fn(name: str, kind: str, tensor: torch.Tensor) -> None:
        column = points[(name, kind)].column
        x = tensor[current["batch"].token_mask.to(tensor.device)]
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        total[column] += x.sum(dim=0).double().cpu()
        second[column] += (x.T @ x).double().cpu()

    all_batches = batches(lm, texts, batch_size, max_length, skip_special)
    tokens = sum(int(batch.token_mask.sum()) for batch in all_batches)
    with torch.inference_mode(), trace(lm.model, *_hook_names(points), fn=fn, stop=True):
        for batch in tqdm(all_batches, desc=f"moments {lm.name}", disable=not progress, unit="batch"):
            current["batch"] = batch
            _run_stopped(lm.model, batch, lm.device)
    return total / tokens, second / tokens
