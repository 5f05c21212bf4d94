"""Record reference outputs of the ORIGINAL TensorFlow tox-block and toxic-comment-classifier models.

Run once, by hand, in a throwaway virtualenv that has TensorFlow; never in the test suite. The tests
compare `detox_utils.evaluators`' torch re-implementations with the values this script wrote.

tox-block 0.1.2 was trained with Keras 2.2.4-tf and its LSTM uses Keras 2's ``hard_sigmoid``; Keras 3
redefined ``hard_sigmoid`` (slope 1/6 instead of 0.2), so its reference must come from TensorFlow 2.15
(the last release with Keras 2)::

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 keras-preprocessing==1.1.2 pandas joblib scikit-learn h5py
    /tmp/tfvenv/bin/pip install --no-deps tox-block==0.1.2
    /tmp/tfvenv/bin/python tests/data/record_toxblock_reference.py tox-block

toxic-comment-classifier 0.3.0 ships Keras 3 weights (``model.weights.h5``), so it needs Keras 3::

    python3.11 -m venv /tmp/tfvenv3
    /tmp/tfvenv3/bin/pip install tensorflow-cpu h5py
    /tmp/tfvenv3/bin/pip install --no-deps toxic-comment-classifier==0.3.0
    /tmp/tfvenv3/bin/python tests/data/record_toxblock_reference.py toxic-comment-classifier
"""
import datetime
import json
import os
import platform
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent

TEXTS = [
    "You are a complete idiot and everybody hates you.",
    "Thank you for the helpful edit, the article reads much better now.",
    "shut up, you stupid ugly moron!!!",
    "I will find you and kill you",
    "The weather in Paris was mild for most of October.",
    "F*** off\nand die, you pathetic loser",
    "What a LOVELY day; let's go to the park :)",
    "zxqvw qwpzk",
    # longer than the models' 100-token window: the originals keep only the last 100 tokens
    " ".join(["the committee met on tuesday to discuss the budget for the new library"] * 12)
    + " and you are all fucking idiots",
    " ".join(["you are a disgusting idiot"] * 30) + " " + " ".join(["thanks for the nice weather report"] * 20),
]


def _env() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "date": datetime.date.today().isoformat(),
        "script": "tests/data/record_toxblock_reference.py",
    }


def record_tox_block() -> None:
    import pandas as pd
    from tox_block import __version__ as version
    from tox_block import prediction

    encoded = prediction._encoder.transform(pd.DataFrame(TEXTS, columns=["text"]))
    probs = prediction._model.predict(encoded, verbose=0)
    out = {
        "package": "tox-block",
        "version": version,
        "how": "tox_block.prediction._encoder.transform + _model.predict (raw sigmoid heads, no rescaling)",
        "labels": ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"],
        "texts": TEXTS,
        "encoded": encoded.astype(int).tolist(),
        "probs": probs.astype(float).tolist(),
        "environment": _env(),
    }
    (OUT / "toxblock_reference.json").write_text(json.dumps(out, indent=1) + "\n")


def record_toxic_comment_classifier() -> None:
    from tensorflow.keras.preprocessing.sequence import pad_sequences
    from toxic_classifier import ToxicCommentClassifier
    from toxic_classifier import model as tcc_model

    clf = ToxicCommentClassifier()
    encoded = pad_sequences(clf.tokenizer.texts_to_sequences(TEXTS), maxlen=tcc_model.MAXLEN)
    probs = clf.model.predict(encoded, verbose=0)
    out = {
        "package": "toxic-comment-classifier",
        "version": "0.3.0",
        "how": "ToxicCommentClassifier().tokenizer + pad_sequences(maxlen=100) + .model.predict (raw heads)",
        "labels": list(tcc_model.LIST_CLASSES),
        "texts": TEXTS,
        "encoded": encoded.astype(int).tolist(),
        "probs": probs.astype(float).tolist(),
        "environment": _env(),
    }
    (OUT / "toxic_comment_classifier_reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    {"tox-block": record_tox_block, "toxic-comment-classifier": record_toxic_comment_classifier}[sys.argv[1]]()
