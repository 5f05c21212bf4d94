"""A torch re-implementation of the Keras bidirectional-LSTM toxicity classifiers shipped on PyPI.

`tox-block` and `toxic-comment-classifier` each ship a Keras model (Embedding -> Bidirectional(LSTM,
return_sequences) -> GlobalMaxPooling1D -> Dense(relu) -> Dense(6, sigmoid)) and a pickled Keras
`Tokenizer`. Both packages import TensorFlow, so this module never imports them: it reads their files.

What is here:

- `load_tokenizer(path)`: the pickled tokenizer through `RestrictedUnpickler`, which maps the Keras
  `Tokenizer` (and tox-block's `TokenSequencer` wrapper) to inert stand-ins and refuses every other
  global, so a tampered pickle cannot run code.
- `KerasTokenizer`: Keras' `texts_to_sequences` (filters, lower, split on one character, vocabulary
  cut at ``num_words``), and `pad_pre` (Keras' `pad_sequences` defaults: pad and truncate at the front).
- `keras2_hard_sigmoid`: Keras 2's piecewise-linear sigmoid, the recurrent activation tox-block was
  trained with (Keras 3 changed its slope, so loading the model in Keras 3 changes its outputs).
- `BiLSTMClassifier`: the network in torch, with weights read from the HDF5 file by h5py
  (`from_keras2_h5` for a full Keras-2 model file, `from_keras3_weights_h5` for a Keras-3 weights file).
"""
from __future__ import annotations

import collections
import contextlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import numpy as np
import torch
from torch import nn

__all__ = [
    "RestrictedUnpickler",
    "KerasTokenizer",
    "load_tokenizer",
    "pad_pre",
    "keras2_hard_sigmoid",
    "single_thread",
    "BiLSTMClassifier",
]


class _TokenizerState:
    """Inert stand-in for a pickled Keras ``Tokenizer``: the unpickler fills its ``__dict__``."""


class _TokenSequencerState:
    """Inert stand-in for tox-block's ``TokenSequencer`` (holds ``tokenizer`` and ``max_sequence_length``)."""


_TOKENIZER_CLASSES = {
    ("keras_preprocessing.text", "Tokenizer"),
    ("keras.preprocessing.text", "Tokenizer"),
    ("keras.src.preprocessing.text", "Tokenizer"),
    ("keras.src.legacy.preprocessing.text", "Tokenizer"),
    ("tensorflow.keras.preprocessing.text", "Tokenizer"),
}
_ALLOWED_GLOBALS: dict[tuple[str, str], type] = {
    **{key: _TokenizerState for key in _TOKENIZER_CLASSES},
    ("tox_block.data_processing.preprocessors", "TokenSequencer"): _TokenSequencerState,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for Keras tokenizer pickles that resolves only the globals such a pickle needs.

    The Keras ``Tokenizer`` classes (and tox-block's ``TokenSequencer``) become inert stand-ins whose
    attributes are plain dicts, strings and ints; ``OrderedDict``, ``defaultdict`` and ``int`` (the
    default factory of its counters) are allowed; any other global raises `pickle.UnpicklingError`.
    """

    def find_class(self, module: str, name: str) -> type:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a tokenizer pickle; "
                f"allowed: {', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))}"
            ) from None


@dataclass(frozen=True)
class KerasTokenizer:
    """The parts of a fitted Keras ``Tokenizer`` that ``texts_to_sequences`` uses.

    ``word_index`` keeps only the words whose index is below ``num_words`` (Keras drops the others
    when ``oov_token`` is None, which is checked on loading).
    """

    word_index: dict[str, int]
    num_words: int
    filters: str
    lower: bool
    split: str

    def words(self, text: str) -> list[str]:
        """Keras' ``text_to_word_sequence``: lower-case, map every filter character to ``split``, split."""
        if self.lower:
            text = text.lower()
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        return [w for w in text.split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        """Word indices of each text; words outside the first ``num_words - 1`` are dropped."""
        index = self.word_index
        return [[index[w] for w in self.words(t) if w in index] for t in texts]


def load_tokenizer(path: str | Path) -> tuple[KerasTokenizer, int | None]:
    """Read a pickled Keras ``Tokenizer`` (or tox-block's ``TokenSequencer``) without Keras.

    Returns the tokenizer and, for a ``TokenSequencer``, its ``max_sequence_length`` (else None).
    Raises ValueError for tokenizer settings this re-implementation does not cover.
    """
    with open(path, "rb") as f:
        obj = RestrictedUnpickler(f).load()
    maxlen = None
    if isinstance(obj, _TokenSequencerState):
        maxlen = int(obj.max_sequence_length)
        obj = obj.tokenizer
    if not isinstance(obj, _TokenizerState):
        raise ValueError(f"{path} does not hold a Keras Tokenizer (found {type(obj).__name__})")
    state = obj.__dict__
    unsupported = {
        "char_level": state.get("char_level", False),
        "oov_token": state.get("oov_token"),
        "analyzer": state.get("analyzer"),
    }
    if any(v not in (False, None) for v in unsupported.values()) or not state.get("num_words"):
        raise ValueError(f"unsupported Keras Tokenizer settings in {path}: {unsupported}, "
                         f"num_words={state.get('num_words')!r}; supported: word level, no OOV token, no analyzer, "
                         "a vocabulary limit")
    num_words = int(state["num_words"])
    vocab = {w: int(i) for w, i in state["word_index"].items() if int(i) < num_words}
    tokenizer = KerasTokenizer(word_index=vocab, num_words=num_words, filters=state["filters"],
                               lower=bool(state["lower"]), split=state["split"])
    return tokenizer, maxlen


def pad_pre(sequences: Sequence[Sequence[int]], maxlen: int) -> np.ndarray:
    """Keras ``pad_sequences(seqs, maxlen)`` with its defaults: zeros in front, keep the last ``maxlen``.

    Returns ``[n, maxlen]`` int64.
    """
    out = np.zeros((len(sequences), maxlen), dtype=np.int64)
    for row, seq in enumerate(sequences):
        kept = list(seq)[-maxlen:]
        if kept:
            out[row, maxlen - len(kept):] = kept
    return out


def keras2_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` elementwise (any shape).

    Keras 3 redefined it as ``relu6(x + 3) / 6``; tox-block was trained with this one.
    """
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread inside the block; the previous setting is restored in ``finally``.

    The LSTM loop is 100 steps of tiny matmuls: extra threads only add synchronisation, and on a busy
    machine they made a batch 30-100x slower (measured: 3-4 s vs 0.04-0.15 s for 64 texts on 2 cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


RECURRENT_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": keras2_hard_sigmoid,
    "sigmoid": torch.sigmoid,
}


class BiLSTMClassifier(nn.Module):
    """Embedding -> bidirectional LSTM -> max over time -> Dense(relu) -> Dense(sigmoid), in Keras layout.

    Weights use Keras' layout: ``kernel [d_in, 4u]``, ``recurrent_kernel [u, 4u]``, ``bias [4u]`` with
    gates in the order input, forget, cell, output (the same order as torch's LSTM), ``x @ kernel``.
    The LSTM runs without masking, so padding zeros are fed through it exactly as Keras does.
    """

    def __init__(self, embeddings: np.ndarray, lstm: dict[str, dict[str, np.ndarray]],
                 dense: tuple[np.ndarray, np.ndarray], out: tuple[np.ndarray, np.ndarray],
                 recurrent_activation: str):
        super().__init__()
        if recurrent_activation not in RECURRENT_ACTIVATIONS:
            raise ValueError(f"unknown recurrent activation {recurrent_activation!r}; "
                             f"known: {', '.join(RECURRENT_ACTIVATIONS)}")
        self.recurrent_activation = recurrent_activation
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        self.embedding = nn.Parameter(t(embeddings), requires_grad=False)           # [vocab, d_emb]
        self.kernel = nn.Parameter(torch.stack([t(lstm[d]["kernel"]) for d in ("forward", "backward")]),
                                   requires_grad=False)                            # [2, d_emb, 4u]
        self.recurrent = nn.Parameter(torch.stack([t(lstm[d]["recurrent_kernel"]) for d in ("forward", "backward")]),
                                      requires_grad=False)                         # [2, u, 4u]
        self.bias = nn.Parameter(torch.stack([t(lstm[d]["bias"]) for d in ("forward", "backward")]),
                                 requires_grad=False)                              # [2, 4u]
        self.dense_w, self.dense_b = (nn.Parameter(t(a), requires_grad=False) for a in dense)
        self.out_w, self.out_b = (nn.Parameter(t(a), requires_grad=False) for a in out)
        self.eval()

    @property
    def units(self) -> int:
        return self.recurrent.shape[1]

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids: [batch, time]`` int64 -> probabilities ``[batch, n_labels]`` float32 (run on one thread)."""
        with single_thread():
            return self._forward(ids)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        act = RECURRENT_ACTIVATIONS[self.recurrent_activation]
        x = self.embedding[ids]                                                    # [b, T, d_emb]
        # both directions as a leading axis of 2; the backward one reads time reversed
        xs = torch.stack([x, x.flip(1)])                                           # [2, b, T, d_emb]
        pre = torch.einsum("zbtd,zdg->zbtg", xs, self.kernel) + self.bias[:, None, None, :]  # [2, b, T, 4u]
        u = self.units
        h = x.new_zeros(2, x.shape[0], u)
        c = x.new_zeros(2, x.shape[0], u)
        pooled = x.new_full((2, x.shape[0], u), -torch.inf)
        for step in range(x.shape[1]):
            z = pre[:, :, step] + torch.matmul(h, self.recurrent)                    # [2, b, 4u]
            i, f, g, o = z.split(u, dim=-1)
            c = act(f) * c + act(i) * torch.tanh(g)
            h = act(o) * torch.tanh(c)
            pooled = torch.maximum(pooled, h)
        feats = torch.cat([pooled[0], pooled[1]], dim=-1)                          # [b, 2u] (forward first)
        hidden = torch.relu(feats @ self.dense_w + self.dense_b)
        return torch.sigmoid(hidden @ self.out_w + self.out_b)

    @classmethod
    def from_keras2_h5(cls, path: str | Path, recurrent_activation: str) -> "BiLSTMClassifier":
        """Read a full Keras-2 model file (``model.save(...h5)``): groups ``model_weights/<layer>/<layer>/``."""
        with h5py.File(path, "r") as f:
            w = f["model_weights"]
            keys = ("kernel", "recurrent_kernel", "bias")
            lstm = {d: {k: w[f"bidirectional/bidirectional/{d}_lstm/{k}:0"][()] for k in keys}
                    for d in ("forward", "backward")}
            return cls(
                embeddings=w["embedding/embedding/embeddings:0"][()],
                lstm=lstm,
                dense=(w["dense/dense/kernel:0"][()], w["dense/dense/bias:0"][()]),
                out=(w["dense_1/dense_1/kernel:0"][()], w["dense_1/dense_1/bias:0"][()]),
                recurrent_activation=recurrent_activation,
            )

    @classmethod
    def from_keras3_weights_h5(cls, path: str | Path, recurrent_activation: str) -> "BiLSTMClassifier":
        """Read a Keras-3 weights file (``model.save_weights(...weights.h5)``): ``layers/<layer>/vars/<i>``."""
        with h5py.File(path, "r") as f:
            layers = f["layers"]
            keys = ("kernel", "recurrent_kernel", "bias")      # vars/0, vars/1, vars/2
            lstm = {d: {k: layers[f"bidirectional/{d}_layer/cell/vars/{i}"][()] for i, k in enumerate(keys)}
                    for d in ("forward", "backward")}
            return cls(
                embeddings=layers["embedding/vars/0"][()],
                lstm=lstm,
                dense=(layers["dense/vars/0"][()], layers["dense/vars/1"][()]),
                out=(layers["dense_1/vars/0"][()], layers["dense_1/vars/1"][()]),
                recurrent_activation=recurrent_activation,
            )
