"""Export: the folded edit as a plain transformers folder gives the in-process fold's logits."""
from __future__ import annotations

import json

import pytest
import torch

from detox_utils import export, interventions as iv, models
from detox_utils.__main__ import main

TOXIC = ["I hate you, you stupid idiot.", "You are a worthless moron.", "shut up and go away, idiot"]
NEUTRAL = ["What a lovely day for a walk.", "The council said the bridge will open.", "She planted tomatoes."]


@pytest.mark.parametrize("method,params", [("aura", {}), ("trne", {"n_layers": 2, "rho": 0.2}),
                                           ("meow2x", {"n_layers": 2, "k_neurons": 8, "scale": 0.0})])
def test_exported_model_loads_alone_and_matches_the_fold(tmp_path, method, params):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = models.tiny("llama")
    fitted = iv.fit(method, lm, TOXIC, NEUTRAL, progress=False, **params)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    out = export.export_model(lm, fitted, tmp_path / "edited", measured=["rtp: a line"])
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())  # restored
    ids = torch.tensor([[1, 7, 22, 5, 9]])
    with torch.no_grad(), fitted.apply(lm, fold=True):
        expected = lm.model(ids).logits
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(out)("hello")["input_ids"] == lm.tokenizer("hello")["input_ids"]
    card = (out / "README.md").read_text()
    assert f"`{method}`" in card and "rtp: a line" in card
    assert json.loads((out / "detox_method.json").read_text())["method"]["method"] == method


def test_export_cli_errors(tmp_path, capsys):
    assert main(["export", "--model", "smollm2-135m", "--method", "none", "--out", str(tmp_path)]) == 2
    assert "nothing to fold" in capsys.readouterr().err
    assert main(["export", "--model", "smollm2-135m", "--method", "damp", "--param", "alpha",
                 "--out", str(tmp_path)]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["export", "--model", "smollm2-135m", "--method", "damp", "--param", "alpha=2.0",
                 "--out", str(tmp_path)]) == 2
    assert "a dampening" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    lm = models.tiny("llama")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export.export_model(lm, iv.fit("aura", lm, TOXIC, NEUTRAL, progress=False), tmp_path / "file")


def test_card_lines_come_from_the_grid(tmp_path):
    import numpy as np

    from test_evidence import _write

    rng = np.random.default_rng(0)
    _write(tmp_path, rng)
    h = _write(tmp_path, rng, method="aura", p_toxic=0.08, ppl=21.0)
    _write(tmp_path, rng, method="aura", control_seed=1, p_toxic=0.4)
    lines = export.measured_lines(tmp_path, "m", "aura", {"auroc_threshold": 0.5})
    assert len(lines) == 1 and lines[0].startswith("rtp-challenging: toxicity probability")
    assert f"{h}.json" in lines[0] and "+5.0%" in lines[0]
    assert export.measured_lines(tmp_path, "m", "det0", {"k": 300}) == []
    with pytest.raises(NotADirectoryError):
        export.measured_lines(tmp_path / "nope", "m", "aura", {})
