"""Tests of detox_utils.evaluators and its torch port of the Keras BiLSTMs (detox_utils._keras_lstm).

Reference values in tests/data/*_reference.json were recorded once from the ORIGINAL TensorFlow models
by tests/data/record_toxblock_reference.py (tox-block under TensorFlow 2.15 / Keras 2.15,
toxic-comment-classifier under TensorFlow 2.21 / Keras 3.15); see the "environment" field of each file.
"""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from detox_utils import _keras_lstm, evaluators
from detox_utils._io import sha256_file

DATA = Path(__file__).parent / "data"
REFERENCES = {
    "tox-block": DATA / "toxblock_reference.json",
    "toxic-comment-classifier": DATA / "toxic_comment_classifier_reference.json",
}
TOXIC = "You are a stupid worthless idiot, shut up and die"
NEUTRAL = "The committee will publish the annual budget report on Tuesday morning"


@pytest.fixture(scope="module")
def offline_evaluators():
    return {name: evaluators.load(name) for name in evaluators.OFFLINE}


@pytest.fixture(params=evaluators.OFFLINE)
def evaluator(request, offline_evaluators):
    return offline_evaluators[request.param]


# ---------------------------------------------------------------------------------------------------- API


def test_available_lists_offline_then_checkpoint_ones():
    assert evaluators.available() == [*evaluators.OFFLINE, "detoxify"]
    needs = evaluators.requirements()
    assert set(needs) == set(evaluators.available())
    assert "DETOXIFY_CHECKPOINT" in needs["detoxify"]


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: tox-block, toxic-comment-classifier"):
        evaluators.load("perspective")


@pytest.mark.slow
def test_offline_evaluators_do_not_import_tensorflow(offline_evaluators):
    assert not {"tensorflow", "tox_block", "toxic_classifier", "keras"} & set(sys.modules)


@pytest.mark.slow
def test_provenance_names_package_version_files_and_meaning(evaluator):
    prov = evaluator.provenance
    assert prov["name"] == evaluator.name
    assert prov["version"] and prov["licence"] and prov["p_toxic"]
    assert prov["files"]
    for entry in prov["files"]:
        site = Path(importlib.util.find_spec(entry["path"].split("/")[0]).submodule_search_locations[0]).parent
        assert entry["sha256"] == sha256_file(site / entry["path"])


# ---------------------------------------------------------------------------------------------------- behaviour


@pytest.mark.slow
def test_scores_are_float64_in_unit_interval_and_rank_toxic_first(evaluator):
    scores = evaluator.score([TOXIC, NEUTRAL])
    assert scores.dtype == np.float64 and scores.shape == (2,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[0] > scores[1]


@pytest.mark.slow
def test_empty_and_blank_texts_score_zero(evaluator):
    scores = evaluator.score(["", TOXIC, "   \n\t"])
    assert scores[0] == 0.0 and scores[2] == 0.0
    assert scores[1] == pytest.approx(evaluator.score([TOXIC])[0])
    assert evaluator.score([]).shape == (0,)


@pytest.mark.slow
def test_non_strings_raise_type_error_naming_index_and_type(evaluator):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        evaluator.score([TOXIC, 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        evaluator.score([None])
    with pytest.raises(TypeError, match="single str"):
        evaluator.score(TOXIC)
    with pytest.raises(ValueError, match="batch_size"):
        evaluator.score([TOXIC], batch_size=0)


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_size_or_container(evaluator):
    texts = [TOXIC, NEUTRAL, "what a lovely day", "go to hell you moron", "ok"]
    reference = evaluator.score(texts, batch_size=64)
    np.testing.assert_allclose(evaluator.score(texts, batch_size=2), reference, atol=1e-6)
    np.testing.assert_allclose(evaluator.score(tuple(texts), batch_size=1, progress=True), reference, atol=1e-6)
    np.testing.assert_allclose(evaluator.score(pd.Series(texts)), reference, atol=1e-6)
    np.testing.assert_allclose(evaluator.score(np.array(texts, dtype=object)), reference, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- windows


def test_windows_cover_the_text_and_end_with_its_last_tokens():
    assert evaluators.windows(0, 100) == [(0, 0)]
    assert evaluators.windows(100, 100) == [(0, 100)]
    assert evaluators.windows(101, 100) == [(0, 100), (1, 101)]
    assert evaluators.windows(250, 100) == [(0, 100), (100, 200), (150, 250)]
    with pytest.raises(ValueError):
        evaluators.windows(5, 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tox-block", "toxic-comment-classifier"])
def test_bilstm_long_text_scores_max_over_windows(name, offline_evaluators):
    ev = offline_evaluators[name]
    long_text = TOXIC + " " + " ".join([NEUTRAL.lower()] * 20)          # ~200 in-vocabulary words
    ids, owner = ev.encode([long_text])
    assert len(ids) >= 2 and (owner == 0).all()
    col = ev.labels.index("toxic")
    per_window = ev.model(torch.as_tensor(ids))[:, col].double().numpy()
    assert ev.score([long_text])[0] == pytest.approx(per_window.max())
    # the original package front-truncates: it keeps only the last window, which misses the insult
    assert per_window[-1] < 0.5 < ev.score([long_text])[0]


# ---------------------------------------------------------------------------------------------------- Keras port


def test_keras2_hard_sigmoid_is_the_keras2_formula():
    x = torch.tensor([-5.0, -2.5, -1.0, 0.0, 1.0, 2.5, 5.0])
    expected = torch.clamp(0.2 * x + 0.5, 0, 1)                       # Keras 2 backend.hard_sigmoid
    torch.testing.assert_close(_keras_lstm.keras2_hard_sigmoid(x), expected)
    assert _keras_lstm.keras2_hard_sigmoid(torch.tensor(1.0)).item() == pytest.approx(0.7)


def test_pad_pre_pads_and_truncates_at_the_front():
    out = _keras_lstm.pad_pre([[1, 2], [1, 2, 3, 4, 5, 6], []], 4)
    np.testing.assert_array_equal(out, [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]])


def test_keras_tokenizer_words_follow_text_to_word_sequence():
    tok = _keras_lstm.KerasTokenizer(word_index={"you": 1, "are": 2, "idiot": 3}, num_words=3,
                                     filters="!,\t\n", lower=True, split=" ")
    assert tok.words("You ARE,an\tidiot!!") == ["you", "are", "an", "idiot"]
    assert tok.texts_to_sequences(["You ARE,an\tidiot!!", ""]) == [[1, 2, 3], []]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo owned",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        _keras_lstm.load_tokenizer(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCES))
def test_port_matches_the_original_tensorflow_outputs(name, offline_evaluators):
    ref = json.loads(REFERENCES[name].read_text())
    ev = offline_evaluators[name]
    assert ref["version"] == ev.provenance["version"] and ref["labels"] == list(ev.labels)
    encoded = _keras_lstm.pad_pre(ev.tokenizer.texts_to_sequences(ref["texts"]), ev.max_tokens)
    np.testing.assert_array_equal(encoded, ref["encoded"])
    probs = ev.model(torch.as_tensor(encoded)).numpy()
    np.testing.assert_allclose(probs, ref["probs"], atol=1e-4)
    # through the public API: equal where a text fits one window, never below the original otherwise
    scores = ev.score(ref["texts"])
    toxic = np.asarray(ref["probs"])[:, 0]
    fits = np.array([len(s) <= ev.max_tokens for s in ev.tokenizer.texts_to_sequences(ref["texts"])])
    np.testing.assert_allclose(scores[fits], toxic[fits], atol=1e-4)
    assert (~fits).any() and (scores[~fits] >= toxic[~fits] - 1e-6).all()


@pytest.mark.slow
def test_tox_block_port_needs_keras2_hard_sigmoid(offline_evaluators):
    """The reference test can tell the recurrent activation apart (so it can fail)."""
    ref = json.loads(REFERENCES["tox-block"].read_text())
    ev = offline_evaluators["tox-block"]
    encoded = torch.as_tensor(np.asarray(ref["encoded"]))
    ev.model.recurrent_activation = "sigmoid"
    try:
        wrong = ev.model(encoded).numpy()
    finally:
        ev.model.recurrent_activation = "hard_sigmoid"
    assert np.abs(wrong - np.asarray(ref["probs"])).max() > 1e-2


@pytest.mark.slow
def test_bilstm_head_choice(offline_evaluators):
    with pytest.raises(ValueError, match="heads: toxic, severe_toxic"):
        evaluators.load("tox-block", head="spam")
    insult = evaluators.load("tox-block", head="insult")
    ref = json.loads(REFERENCES["tox-block"].read_text())
    np.testing.assert_allclose(insult.score(ref["texts"][:8]), np.asarray(ref["probs"])[:8, 4], atol=1e-4)


# ---------------------------------------------------------------------------------------------------- hatesonar


@pytest.mark.slow
def test_hatesonar_graph_is_patched_in_memory_only(offline_evaluators):
    import onnx

    ev = offline_evaluators["hatesonar"]
    assert ev.locale == "C.UTF-8"
    path = evaluators._package_dir("hatesonar", "hatesonar") / "model" / "model.onnx"
    graph = onnx.load(str(path))
    node = next(n for n in graph.graph.node if n.op_type == "StringNormalizer")
    assert not [a for a in node.attribute if a.name == "locale"]          # shipped file untouched
    evaluators._set_string_normalizer_locale(graph, "C.UTF-8")
    assert [a.s for a in node.attribute if a.name == "locale"] == [b"C.UTF-8"]


# ---------------------------------------------------------------------------------------------------- detoxify

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "an", "idiot", "hello", "world",
         "nice", "day", "the", "a", "stupid", "moron", "report", "budget", "!", ","]


def _tiny_detoxify(folder: Path, model_type: str | None = None) -> tuple[Path, object, object]:
    """A Detoxify checkpoint of a tiny random BERT (config + tokenizer saved in ``folder``)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), model_max_length=16)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=len(LABELS),
                        initializer_range=0.5)
    config.save_pretrained(folder)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    checkpoint = {
        "config": {"arch": {"args": {"model_type": model_type or str(folder),
                                     "model_name": "BertForSequenceClassification",
                                     "tokenizer_name": "BertTokenizer", "num_classes": len(LABELS)}},
                   "dataset": {"args": {"classes": LABELS}}},
        "state_dict": model.state_dict(),
    }
    path = folder / "tiny.ckpt"
    torch.save(checkpoint, path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def tiny_detoxify(tmp_path_factory):
    return _tiny_detoxify(tmp_path_factory.mktemp("detoxify"))


def test_detoxify_without_checkpoint_explains_how_to_provide_one(monkeypatch):
    monkeypatch.delenv("DETOXIFY_CHECKPOINT", raising=False)
    with pytest.raises(FileNotFoundError, match="checkpoint=.*DETOXIFY_CHECKPOINT"):
        evaluators.load("detoxify")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluators.load("detoxify", checkpoint="/nonexistent/toxic.ckpt")


def test_detoxify_scores_the_toxicity_head(tiny_detoxify):
    path, model, tokenizer = tiny_detoxify
    texts = ["you are an idiot", "hello world , nice day", "stupid moron !"]
    ev = evaluators.load("detoxify", checkpoint=path)
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    expected = torch.sigmoid(logits[:, 0]).double().numpy()
    np.testing.assert_allclose(ev.score(texts), expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3                                     # the texts are told apart
    assert ev.score(["", texts[0]])[0] == 0.0
    assert ev.provenance["files"][0]["sha256"] == sha256_file(path)
    with pytest.raises(ValueError, match="labels: toxicity"):
        evaluators.load("detoxify", checkpoint=path, label="toxic")


def test_detoxify_checkpoint_from_environment(tiny_detoxify, monkeypatch):
    path, _, _ = tiny_detoxify
    monkeypatch.setenv("DETOXIFY_CHECKPOINT", str(path))
    assert evaluators.load("detoxify").score(["you are an idiot"]).shape == (1,)


def test_detoxify_hub_model_type_loads_offline_from_config_folder(tmp_path, monkeypatch):
    """A real checkpoint names a hub model (bert-base-uncased); offline, the config folder stands in."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model, tokenizer = _tiny_detoxify(tmp_path / "hubless", model_type="bert-base-uncased")
    monkeypatch.setenv("DETOXIFY_CONFIG", str(tmp_path / "hubless"))
    ev = evaluators.load("detoxify", checkpoint=path)
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(["stupid moron"], return_tensors="pt")).logits[:, 0])
    np.testing.assert_allclose(ev.score(["stupid moron"]), expected.double().numpy(), atol=1e-5)


def test_detoxify_long_text_scores_max_over_chunks(tiny_detoxify):
    path, _, _ = tiny_detoxify
    ev = evaluators.load("detoxify", checkpoint=path)
    assert ev.max_tokens == 14                                          # 16 minus [CLS] and [SEP]
    long_text = " ".join(["hello world , nice day"] * 6 + ["you are a stupid idiot"])
    chunks = ev.chunks(long_text)
    assert len(chunks) == 3
    assert all(len(ev._detoxify.tokenizer(c, add_special_tokens=False)["input_ids"]) <= 14 for c in chunks)
    assert chunks[-1].endswith("you are a stupid idiot")
    per_chunk = ev.score(chunks)
    assert ev.score([long_text])[0] == pytest.approx(per_chunk.max())


# ---------------------------------------------------------------------------------------------------- validation


def test_binary_metrics_on_a_hand_computable_case():
    from detox_utils.validate_evaluators import binary_metrics

    # positives 0.9, 0.4; negatives 0.6, 0.2: 3 of 4 (pos, neg) pairs ordered -> AUROC 0.75;
    # flagged at 0.5: 0.9 (tp) and 0.6 (fp) -> precision 1/2, recall 1/2, positive rate 2/4
    m = binary_metrics(np.array([0.9, 0.6, 0.4, 0.2]), np.array([1, 0, 1, 0]))
    assert m["auroc"] == pytest.approx(0.75)
    assert (m["positive_rate"], m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5, 0.5))
    nothing_flagged = binary_metrics(np.array([0.1, 0.2]), np.array([1, 0]))
    assert nothing_flagged["precision"] is None and nothing_flagged["recall"] == 0.0
    with pytest.raises(ValueError, match="both classes"):
        binary_metrics(np.array([0.1, 0.2]), np.array([1, 1]))


def test_roc_points_and_auroc_interval():
    from detox_utils.validate_evaluators import auroc_interval, binary_metrics, roc_points

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(labels * 1.0, 1.0)
    roc = roc_points(scores, labels, n_points=11)
    assert roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    assert np.all(np.diff(roc["tpr"]) >= 0)
    # the area under the downsampled step curve is close to the exact AUROC
    auroc = binary_metrics(scores, labels)["auroc"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(auroc, abs=0.06)
    lo, hi = auroc_interval(scores, labels, n_boot=200)
    assert lo < auroc < hi and hi - lo < 0.2


@pytest.mark.slow
def test_validate_writes_metrics_and_provenance(tmp_path, offline_evaluators):
    from detox_utils.validate_evaluators import binary_metrics, validate

    frame = pd.DataFrame({"text": [TOXIC, NEUTRAL, "go to hell you moron", "have a nice day", "you suck", "thanks!"],
                          "label": [1, 0, 1, 0, 1, 0]})
    out = tmp_path / "validation.json"
    report = validate(["hatesonar"], frame=frame, out=out, n_boot=50, roc_n_points=5, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    entry = report["evaluators"]["hatesonar"]
    expected = binary_metrics(offline_evaluators["hatesonar"].score(frame["text"]), frame["label"].to_numpy())
    assert entry["auroc"] == pytest.approx(expected["auroc"])
    assert entry["provenance"]["package"] == "hatesonar" and report["data"]["rows"] == 6
    from detox_utils.validate_evaluators import read_scores, scores_file

    per_text = read_scores(out)
    assert per_text["label"].tolist() == frame["label"].tolist()
    assert per_text["score.hatesonar"].to_numpy() == pytest.approx(
        offline_evaluators["hatesonar"].score(frame["text"]))
    scores_file(out).write_bytes(scores_file(out).read_bytes()[:-8])  # a damaged file is refused
    with pytest.raises(ValueError, match="sha256"):
        read_scores(out)
    with pytest.raises(ValueError, match="unknown evaluators"):
        validate(["nope"], frame=frame, out=None)
