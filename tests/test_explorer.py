"""The neuron explorer (detox_utils.explorer) on tiny models built from transformers configs."""
from __future__ import annotations

import json

import pytest
import torch

from detox_utils import activations, data, explorer, localization, models
from detox_utils.__main__ import main


def _norm_and_head(lm):
    return lm.model.get_submodule(lm.arch.final_norm), lm.model.get_output_embeddings().weight.detach()


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
def test_a_neuron_writing_an_unembedding_row_promotes_that_token(family):
    lm = models.tiny(family)
    norm, head = _norm_and_head(lm)
    token, layer, neuron = 57, 1, 5
    down = lm.model.get_submodule(lm.arch.output_projection(layer))
    with torch.no_grad():
        down.weight[:, neuron] = 10 * head[token]
    (write,) = explorer._promoted(lm, [("post", layer, neuron)], k=3)
    assert write["promoted"][0]["id"] == token
    assert write["promoted"][0]["token"] == lm.tokenizer.decode([token])
    assert write["promoted"][0]["logit"] > write["promoted"][1]["logit"]
    assert write["suppressed"][0]["logit"] < write["promoted"][-1]["logit"]


def test_out_units_are_not_neurons_and_get_no_promoted_tokens(tiny_llama):
    writes = explorer._promoted(tiny_llama, [("out", 0, 3), ("pre", 0, 3)], k=2)
    assert writes[0] is None and len(writes[1]["promoted"]) == 2


def test_logit_lens_through_an_rms_norm_ranks_tokens_as_the_scaled_direction(tiny_llama):
    norm, head = _norm_and_head(tiny_llama)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    w = torch.randn(4, head.shape[1], generator=torch.Generator().manual_seed(0))
    lens = explorer.logit_lens(w, head, norm)
    scaled = (norm.weight.detach() * w) @ head.T  # W_U (g * w): the same up to a positive factor per row
    factor = torch.rsqrt(w.pow(2).mean(dim=1, keepdim=True) + norm.variance_epsilon)  # 1 / rms(w)
    assert torch.allclose(lens, factor * scaled, atol=1e-5)
    assert torch.equal(lens.argsort(dim=1), scaled.argsort(dim=1))
    assert torch.allclose(explorer.logit_lens(w, head), w @ head.T)


def test_logit_lens_leaves_a_layer_norm_bias_out(tiny_gpt2):
    norm, head = _norm_and_head(tiny_gpt2)
    with torch.no_grad():
        norm.bias.normal_()
    w = torch.zeros(2, head.shape[1])
    assert torch.allclose(explorer.logit_lens(w, head, norm), torch.zeros(2, head.shape[0]))


def test_logit_lens_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"directions \[n, d_model\]"):
        explorer.logit_lens(torch.zeros(2, 3), torch.zeros(5, 4))


def test_neuron_directions_read_both_weight_layouts():
    linear = torch.arange(12.0).reshape(3, 4)  # [d_model, d_mlp]
    cols = explorer.neuron_directions(linear, torch.tensor([1, 3]), "linear")
    assert torch.equal(cols, linear[:, [1, 3]].T)
    assert torch.equal(explorer.neuron_directions(linear.T, torch.tensor([1, 3]), "conv1d"), cols)
    with pytest.raises(ValueError, match="layout"):
        explorer.neuron_directions(linear, torch.tensor([0]), "dense")


def test_top_texts_are_largest_first_with_ties_by_index():
    responses = torch.tensor([[1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [2.0, 1.0]])
    index, values = explorer.top_texts(responses, 3)
    assert index.tolist() == [[1, 2, 3], [2, 3, 0]]
    assert values.tolist() == [[3.0, 3.0, 2.0], [2.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="k must be in"):
        explorer.top_texts(responses, 5)


def test_token_peaks_ignore_unpooled_tokens():
    hidden = torch.tensor([[[9.0], [1.0], [4.0]], [[0.0], [2.0], [-1.0]]])  # [b=2, t=3, k=1]
    mask = torch.tensor([[False, True, True], [True, True, False]])
    positions, values = explorer.token_peaks(hidden, mask)
    assert positions.tolist() == [[2], [1]] and values.tolist() == [[4.0], [2.0]]
    with pytest.raises(ValueError, match="at least one True"):
        explorer.token_peaks(hidden, torch.zeros(2, 3, dtype=torch.bool))


def test_random_units_are_distinct_deterministic_and_in_range():
    shapes = {"pre": (3, 4), "out": (3, 2)}
    drawn = explorer.random_units(shapes, 10, seed=1)
    assert drawn == explorer.random_units(shapes, 10, seed=1) != explorer.random_units(shapes, 10, seed=2)
    assert len(set(drawn)) == 10
    assert all(0 <= l < shapes[s][0] and 0 <= u < shapes[s][1] for s, l, u in drawn)
    assert len(explorer.random_units(shapes, 18)) == 18
    with pytest.raises(ValueError, match=r"k must be in \[1, 18\]"):
        explorer.random_units(shapes, 19)


def test_layer_counts():
    assert explorer.layer_counts([0, 2, 2], 4) == [1, 0, 2, 0]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        explorer.layer_counts([4], 4)


@pytest.mark.parametrize("bad, match", [
    (dict(k_units=0), "k_units must be an integer >= 1"),
    (dict(k_texts=2.5), "k_texts"),
    (dict(n_contrast=1), "n_contrast must be an integer >= 2"),
    (dict(sites=["middle"]), "sites"),
])
def test_bad_settings_say_what_is_allowed(bad, match):
    with pytest.raises(ValueError, match=match):
        explorer.ExploreConfig(**bad)


def test_explore_on_a_tiny_model_agrees_with_the_localization(tiny_llama, tmp_path):
    cfg = explorer.ExploreConfig(model=tiny_llama.name, n_contrast=12, k_units=6, k_texts=3, k_tokens=4)
    found = explorer.explore(cfg, tiny_llama, progress=False)
    toxic, neutral = data.contrast_texts(12, 12, seed=0)
    resp_t = activations.record(tiny_llama, toxic, sites=cfg.sites, progress=False)
    resp_n = activations.record(tiny_llama, neutral, sites=cfg.sites, progress=False)
    scores = {s: localization.auroc(resp_t[s], resp_n[s]) for s in cfg.sites}
    expected = localization.top_units(scores, 6)
    assert [(u["site"], u["layer"], u["unit"]) for u in found["units"]] == [e[:3] for e in expected]
    texts = toxic + neutral
    for unit in found["units"]:
        assert len(unit["top_texts"]) == 3
        pooled = [t["pooled"] for t in unit["top_texts"]]
        assert pooled == sorted(pooled, reverse=True)
        for t in unit["top_texts"]:
            assert t["label"] == ("toxic" if t["text_index"] < 12 else "neutral")
            assert texts[t["text_index"]].startswith(t["text"])
            assert t["peak"] == pytest.approx(t["pooled"], rel=1e-4, abs=1e-5)  # the peak token is the max
            assert t["token"] and t["token"] in t["text"]
        assert (unit["write"] is None) == (unit["site"] == "out")
        if unit["write"]:
            for entry in unit["write"]["promoted"]:
                ids_t = [tiny_llama.tokenizer(t, truncation=True, max_length=cfg.max_length)["input_ids"]
                         for t in toxic]
                assert entry["in_toxic"] == sum(ids.count(entry["id"]) for ids in ids_t)
    assert sum(found["layer_counts"]["top"]) == sum(found["layer_counts"]["random"]) == 6
    assert len({(u["site"], u["layer"], u["unit"]) for u in found["random"]}) == 6

    path = explorer.write(cfg, tmp_path, tiny_llama, found)
    assert path.name == f"tiny-llama__{cfg.config_hash}.json"  # not the book's settings
    record = json.loads(path.read_text())
    assert record["kind"] == "explorer" and record["config"]["k_units"] == 6
    assert record["provenance"]["data"]["sha256"] == data.provenance("insults-train")["sha256"]
    assert "git_commit" in record["provenance"]
    default = explorer.ExploreConfig(model=tiny_llama.name)
    assert explorer.write(default, tmp_path, tiny_llama, found).name == "tiny-llama.json"


def test_cli_refuses_bad_settings_in_one_line(capsys):
    assert main(["explore", "--model", "smollm2-135m", "--n-contrast", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "n_contrast" in err and len(err.strip().splitlines()) == 1


def test_the_page_reads_a_record_and_escapes_its_texts(tiny_llama, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from detox_utils.report import explorer as page

    cfg = explorer.ExploreConfig(model=tiny_llama.name, n_contrast=12, k_units=6, k_texts=2, k_tokens=3)
    found = explorer.explore(cfg, tiny_llama, progress=False)
    found["units"][0]["top_texts"][0]["before"] = "<script>alert(1)</script>"
    explorer.write(explorer.ExploreConfig(model=tiny_llama.name), tmp_path, tiny_llama, found)
    (tmp_path / "other__abc.json").write_text("{}")  # another setting: not the book's
    (record,) = page.load_explorer(tmp_path)
    s = page.summary(record)
    assert s["k"] == 6 and s["texts"] == 12 and 0 <= s["texts_toxic"] <= 12
    assert s["early_top"] == sum(record["layer_counts"]["top"][:s["n_early"]])
    words = page.interpretation(s)
    assert f"{s['texts_toxic']} of the 12 texts" in words and "tiny-llama" in words
    table = page.units_table_html(record, "units-x")
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert table.count("<tr>") == 7 and 'id="units-x"' in table and "oninput=" in table
    assert page.visible(" a\n") == "␣a⏎"
    assert list(page.summary_table([record]).columns) == ["", "tiny-llama"]
    fig = page.plot_layers([record])
    assert len(fig.axes) == 1
    with pytest.raises(FileNotFoundError, match="python -m detox_utils explore"):
        page.load_explorer(tmp_path / "empty")
