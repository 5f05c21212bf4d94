"""Random-unit controls, the capability record (perplexity with a document-start token, zero-shot),
diversity of continuations, and the config checks that come with them."""
from __future__ import annotations

import pytest
import torch

from detox_utils import experiment, interventions as iv, metrics, models
from detox_utils.config import ConfigError, EvalConfig

TOXIC = ["I hate you, you stupid idiot.", "You are a worthless moron.", "shut up and go away, idiot",
         "what a pathetic loser you are"]
NEUTRAL = ["What a lovely day for a walk.", "The council said the bridge will open.",
           "She planted tomatoes in the garden.", "The train leaves at noon."]
FITS = {"aura": {}, "det0": {"k": 20}, "damp": {"k": 20, "alpha": 0.3},
        "meow2x": {"n_layers": 2, "k_neurons": 8, "scale": 0.0}, "trne": {"n_layers": 2, "rho": 0.2}}


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    lm = models.tiny("llama")
    return lm, {m: iv.fit(m, lm, TOXIC, NEUTRAL, progress=False, **p) for m, p in FITS.items()}


@pytest.mark.parametrize("method", ["aura", "det0", "damp", "meow2x"])
def test_scaling_control_keeps_factors_per_module_on_other_units(fitted, method):
    lm, methods = fitted
    original = methods[method]
    control = iv.random_control(original, seed=3)
    assert type(control) is type(original) and control.params == original.params
    assert control.describe()["control"]["seed"] == 3
    assert set(control.alphas) == set(original.alphas)
    moved = 0
    for name, a in original.alphas.items():
        b = control.alphas[name]
        assert torch.equal(torch.sort(a).values, torch.sort(b).values)  # the same factors per module
        assert int((a != 1).sum()) == int((b != 1).sum())  # as many units touched per module
        moved += int(((a != 1) & (b == 1)).sum())
    assert moved > 0  # the touched units are not the localized ones
    assert control.describe()["units_by_layer"] == original.describe()["units_by_layer"]
    again = iv.random_control(original, seed=3)
    other = iv.random_control(original, seed=4)
    assert all(torch.equal(again.alphas[n], control.alphas[n]) for n in control.alphas)
    assert any(not torch.equal(other.alphas[n], control.alphas[n]) for n in control.alphas)


def test_trne_control_is_a_random_direction_of_the_same_norm(fitted):
    lm, methods = fitted
    original = methods["trne"]
    control = iv.random_control(original, seed=0)
    assert set(control.edits) == set(original.edits)
    for name, (u, w) in original.edits.items():
        cu, cw = control.edits[name]
        fro = torch.linalg.vector_norm(u) * torch.linalg.vector_norm(w)
        cfro = torch.linalg.vector_norm(cu) * torch.linalg.vector_norm(cw)
        assert torch.isclose(fro, cfro, rtol=1e-5)
        cos = torch.nn.functional.cosine_similarity(u, cu, dim=0)
        assert abs(float(cos)) < 0.9


def test_control_applies_and_restores_bit_exactly(fitted):
    lm, methods = fitted
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        base = lm.model(ids).logits
        for m in methods.values():
            control = iv.random_control(m, seed=1)
            with control.apply(lm, fold=True):
                folded = lm.model(ids).logits
            with control.apply(lm, fold=False):
                hooked = lm.model(ids).logits
            torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-5)
            assert not torch.equal(folded, base)
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())


def test_control_errors(fitted):
    lm, methods = fitted
    none = iv.fit("none", lm, TOXIC, NEUTRAL, progress=False)
    with pytest.raises(ValueError, match="needs a fitted intervention"):
        iv.random_control(none, seed=0)
    with pytest.raises(ValueError, match="integer >= 0"):
        iv.random_control(methods["aura"], seed=-1)
    with pytest.raises(ValueError, match="already a random control"):
        iv.random_control(iv.random_control(methods["aura"], seed=0), seed=1)


def test_config_new_fields_validate_and_keep_old_hashes():
    old = EvalConfig(method="aura")
    assert EvalConfig(method="aura", control_seed=None, ppl_prefix="auto", n_zeroshot=0).config_hash \
        == old.config_hash
    assert EvalConfig(method="aura", control_seed=1).config_hash != old.config_hash
    assert EvalConfig(method="aura", prompt_start=0, sample_start=0).config_hash == old.config_hash
    ext = EvalConfig(method="aura", prompt_start=50)
    assert ext.is_extension and not old.is_extension and ext.config_hash != old.config_hash
    assert EvalConfig(method="aura", zeroshot_tasks="piqa, hellaswag").zeroshot_tasks == ("piqa", "hellaswag")
    for bad, match in [({"method": "none", "control_seed": 0}, "control_seed"),
                       ({"method": "aura", "control_seed": -2}, "control_seed"),
                       ({"ppl_prefix": "bos"}, "ppl_prefix"),
                       ({"n_zeroshot": -1}, "n_zeroshot"),
                       ({"prompt_start": -1}, "prompt_start"),
                       ({"sample_start": True}, "sample_start"),
                       ({"sample_start": 2, "n_zeroshot": 200}, "0 for an extension"),
                       ({"zeroshot_tasks": ["mmlu"]}, "zeroshot_tasks"),
                       ({"max_new_tokens": 100000}, "max_new_tokens"),
                       ({"method": "damp", "method_params": {"alpha": 2.0}}, "a dampening"),
                       ({"method": "det0", "method_params": {"k": -5}}, "integer >= 1"),
                       ({"method": "trne", "method_params": {"rho": 0}}, "rho"),
                       ({"method": "aura", "method_params": {"auroc_threshold": 0.3}}, r"\[0.5, 1\)")]:
        with pytest.raises(ConfigError, match=match):
            EvalConfig(**bad)


def test_document_start_is_never_a_chat_turn_token():
    class Tok:
        def __init__(self, bos, eos, vocab):
            self.bos_token, self.eos_token, self._vocab = bos, eos, vocab
            self.bos_token_id = vocab.get(bos)
            self.eos_token_id = vocab.get(eos)

        def get_vocab(self):
            return self._vocab

    smol = Tok("<|im_start|>", "<|im_end|>", {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2})
    assert metrics.document_start_id(smol) == 0
    gemma = Tok("<bos>", "<eos>", {"<pad>": 0, "<eos>": 1, "<bos>": 2})
    assert metrics.document_start_id(gemma) == 2
    qwen = Tok(None, "<|im_end|>", {"<|endoftext|>": 151643, "<|im_end|>": 151645})
    assert metrics.document_start_id(qwen) == 151643
    chat_only = Tok("<|im_start|>", "<|im_end|>", {"<|im_start|>": 1, "<|im_end|>": 2})
    assert metrics.document_start_id(chat_only) is None


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran", "a"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(5 / 7)  # the cat sat the cat ran a
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert metrics.distinct_n(["one two"], 3) != metrics.distinct_n(["one two"], 3)  # NaN: no 3-gram
    assert metrics.diversity(texts, ns=(1, 2)) == {"distinct_1": pytest.approx(5 / 7),
                                                   "distinct_2": pytest.approx(3 / 4)}
    with pytest.raises(ValueError, match="n must be"):
        metrics.distinct_n(texts, 0)
    with pytest.raises(TypeError):
        metrics.distinct_n("a string", 1)


def test_capability_is_cached_per_edited_weights(fitted, monkeypatch):
    lm, methods = fitted
    cfg = EvalConfig(model=lm.name, method="aura", ppl_corpus="wiki", n_ppl=4, ppl_prefix="doc-start")
    calls = []
    real = metrics.perplexity

    def counting(*args, **kwargs):
        calls.append(kwargs.get("prefix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "perplexity", counting)
    first = experiment.capability(cfg, lm, methods["aura"], progress=False)
    again = experiment.capability(cfg, lm, methods["aura"], progress=False)
    assert first == again and calls == ["doc-start"]  # the second came from the cache
    control = experiment.capability(cfg, lm, iv.random_control(methods["aura"], 0), progress=False)
    assert len(calls) == 2 and control != first  # other weights, other record
    assert set(first) == {"perplexity"} and first["perplexity"]["n_texts"] == 4


def test_fit_method_gives_the_control_also_from_the_cache(fitted):
    lm, _ = fitted
    cfg = EvalConfig(model=lm.name, method="det0", method_params={"k": 10}, n_contrast=4)
    plain = experiment.fit_method(cfg, lm, progress=False)
    for _ in range(2):  # fitted, then read from the cache
        ctl = experiment.fit_method(EvalConfig(**{**cfg.to_dict(), "control_seed": 5}), lm, progress=False)
        assert ctl.describe()["control"]["seed"] == 5
        assert any(not torch.equal(ctl.alphas[n], plain.alphas[n]) for n in plain.alphas)


@pytest.mark.slow
@pytest.mark.realcache
@pytest.mark.parametrize("name,token", [("smollm2-135m", "<|endoftext|>"), ("gemma3-270m", "<bos>"),
                                        ("qwen2.5-coder-0.5b", "<|endoftext|>")])
def test_document_start_of_the_packaged_models(name, token):
    from transformers import AutoTokenizer

    folder, _ = models._packaged_folder(name)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.convert_ids_to_tokens(metrics.document_start_id(tok)) == token


def test_fitted_method_cache_is_verified_on_read(fitted):
    from detox_utils._io import CacheIntegrityError, cache_dir

    lm, _ = fitted
    cfg = EvalConfig(model=lm.name, method="det0", method_params={"k": 7}, n_contrast=4)
    experiment.fit_method(cfg, lm, progress=False)
    (path,) = [p for p in cache_dir("interventions").glob("det0-*.pt")
               if iv.load(p).params["k"] == 7]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheIntegrityError, match=path.name):
        experiment.fit_method(cfg, lm, progress=False)
    path.with_name(f".{path.name}.sha256").unlink()  # no record (older code): refitted, not trusted
    again = experiment.fit_method(cfg, lm, progress=False)
    assert again.params["k"] == 7 and iv.load(path).params["k"] == 7


def test_localization_of_other_settings_never_overwrites_the_books(tmp_path):
    from detox_utils import report
    from detox_utils.config import LocalizeConfig

    lm = models.tiny("llama")
    found = {"n_toxic": 2, "n_neutral": 2, "summary": {}}
    book = experiment.write_localization(LocalizeConfig(model=lm.name), tmp_path, lm, found)
    other = experiment.write_localization(LocalizeConfig(model=lm.name, n_boot=3), tmp_path, lm, found)
    assert book.name == f"{lm.name}__auroc-max.json"
    assert other.name == f"{lm.name}__auroc-max__{LocalizeConfig(model=lm.name, n_boot=3).config_hash}.json"
    assert [r["config"]["n_boot"] for r in report.load_localization(tmp_path)] == [100]
    assert report.read_localization(other)["config"]["n_boot"] == 3


def test_a_published_fit_is_used_before_the_cache_and_a_new_fit_is_published(fitted, tmp_path, monkeypatch):
    from detox_utils._io import cache_dir

    lm, _ = fitted
    cfg = EvalConfig(model=lm.name, method="det0", method_params={"k": 9}, n_contrast=4)
    published = tmp_path / "results" / "fits"
    first = experiment.fit_method(cfg, lm, progress=False, result_dir=tmp_path / "results")
    (shared,) = published.glob("det0-*.pt")
    assert (published / f".{shared.name}.sha256").is_file()  # published with its checksum record
    (cache_dir("interventions") / shared.name).unlink()  # this machine's cache is gone
    real_fit = iv.fit
    monkeypatch.setattr(iv, "fit", lambda *a, **k: pytest.fail("refitted although a fit was published"))
    again = experiment.fit_method(cfg, lm, progress=False, result_dir=tmp_path / "results")
    assert all(torch.equal(again.alphas[n], first.alphas[n]) for n in first.alphas)
    ctl = experiment.fit_method(EvalConfig(**{**cfg.to_dict(), "control_seed": 1}), lm, progress=False,
                                result_dir=tmp_path / "results")  # a control permutes the published fit
    assert ctl.describe()["control"]["seed"] == 1
    shared.write_bytes(shared.read_bytes() + b"x")  # a damaged published fit is refused, with the remedy
    with pytest.raises(ValueError, match=f"published fit .*{shared.name} does not match its sha256 record"
                                         ".*restore it"):
        experiment.fit_method(cfg, lm, progress=False, result_dir=tmp_path / "results")
    # a reader (export) uses a grid's fit when it has one and never writes into the grid
    other = EvalConfig(model=lm.name, method="det0", method_params={"k": 7}, n_contrast=4)
    monkeypatch.setattr(iv, "fit", real_fit)
    experiment.fit_method(other, lm, progress=False, result_dir=tmp_path / "results", publish=False)
    assert sorted(p.name for p in published.glob("*.pt")) == [shared.name]
    # nor does an extension: a refit may not be the fit the run it extends used
    ext = EvalConfig(**{**other.to_dict(), "prompt_start": 5})
    experiment.fit_method(ext, lm, progress=False, result_dir=tmp_path / "results")
    assert sorted(p.name for p in published.glob("*.pt")) == [shared.name]


def test_an_extension_checks_it_measures_the_edit_of_its_run_before_generating(fitted, tmp_path):
    from detox_utils import results

    lm, methods = fitted
    base = EvalConfig(model=lm.name, method="aura", ppl_corpus="wiki", n_ppl=4, n_zeroshot=0, n_prompts=3)
    ext = EvalConfig(**{**base.to_dict(), "prompt_start": 3, "n_prompts": 2})
    experiment.check_extension(base, lm, methods["aura"], tmp_path)  # not an extension: nothing to check
    with pytest.raises(ValueError, match="no finished run to extend in .*run the profile it extends"):
        experiment.check_extension(ext, lm, methods["aura"], tmp_path)
    ppl = experiment.capability(base, lm, methods["aura"], progress=False)["perplexity"]["corpus_ppl"]

    def run_with(value):
        results.write_result(tmp_path / f"{base.config_hash}.json", config=base.to_dict(),
                             config_hash=base.config_hash, metrics={"perplexity": {"corpus_ppl": value}},
                             provenance={})

    run_with(ppl * (1 + 5e-5))  # within a rerun's noise: the same edit
    experiment.check_extension(ext, lm, methods["aura"], tmp_path, progress=False)
    run_with(ppl * (1 + 1e-3))  # an AURA refit elsewhere moved it this much: another edit
    with pytest.raises(RuntimeError, match=r"another edit than run .*relative gap 1\.0e-03, allowed 1e-04.*"
                                           r"Publish the run's fit"):
        experiment.check_extension(ext, lm, methods["aura"], tmp_path, progress=False)
    # a control of the run is another config: it is not the run this extension extends
    ctl = EvalConfig(**{**ext.to_dict(), "control_seed": 1})
    with pytest.raises(ValueError, match="no finished run to extend"):
        experiment.check_extension(ctl, lm, methods["aura"], tmp_path, progress=False)


def test_a_stronger_control_touches_nested_supersets_with_the_same_factors(fitted):
    lm, methods = fitted
    original = methods["damp"]  # 20 units at 0.3
    at = {s: iv.permuted_alphas(original.alphas, 3, s) for s in (0.5, 1.0, 2.0, 3.0)}
    assert all(torch.equal(at[1.0][n], iv.permuted_alphas(original.alphas, 3)[n]) for n in original.alphas)
    touched = {s: sum(int((a != 1).sum()) for a in al.values()) for s, al in at.items()}
    assert touched == {0.5: 10, 1.0: 20, 2.0: 40, 3.0: 60}  # round(strength x 20) in all
    for name in original.alphas:
        masks = [at[s][name] != 1 for s in (0.5, 1.0, 2.0, 3.0)]
        for small, big in zip(masks, masks[1:]):
            assert not (small & ~big).any()  # nested: a stronger control keeps the weaker one's units
        values = torch.cat([at[s][name][at[s][name] != 1] for s in at])
        assert torch.allclose(values, torch.full_like(values, 0.3))  # only the method's own factors
    with pytest.raises(ValueError, match="strength must be a finite number > 0"):
        iv.permuted_alphas(original.alphas, 3, 0)
    trne = methods["trne"]
    for name, (u, w) in trne.edits.items():
        u1, w1 = iv.random_direction_edits(trne.edits, 0)[name]
        u2, w2 = iv.random_direction_edits(trne.edits, 0, 2.5)[name]
        assert torch.allclose(u2, 2.5 * u1) and torch.equal(w2, w1)  # same direction, 2.5x the norm


def test_matched_control_finds_the_strength_of_equal_cost(fitted):
    lm, methods = fitted
    method = methods["det0"]

    def cost_of(target_units):  # a cost that grows with the units a control zeroes
        def cost(m):
            units = sum(int((a != 1).sum()) for a in m.alphas.values())
            return 100.0 + (target_units if "control" not in m.provenance else units)
        return cost

    control, info = iv.matched_control(method, 1, cost_of(50), rtol=0.001)
    assert info["matched"] and info["cost"] == pytest.approx(150.0, rel=0.001)
    assert sum(int((a != 1).sum()) for a in control.alphas.values()) == 50  # 2.5x the 20 units
    assert control.describe()["control"]["match"] == "perplexity"
    assert control.describe()["control"]["strength"] == pytest.approx(info["strength"])
    weaker, info = iv.matched_control(method, 1, cost_of(5), rtol=0.001)
    assert info["matched"] and sum(int((a != 1).sum()) for a in weaker.alphas.values()) == 5
    # a cost no strength reaches: the closest measured, and said so
    _, info = iv.matched_control(method, 1, lambda m: 1e6 if "control" not in m.provenance
                                 else 100.0 + sum(int((a != 1).sum()) for a in m.alphas.values()), max_steps=6)
    assert not info["matched"] and info["steps"] == 6
    # a cost that stops moving (every unit touched): doubling stops at once
    _, info = iv.matched_control(method, 1, lambda m: 1e6 if "control" not in m.provenance else 101.0)
    assert not info["matched"] and info["steps"] == 2
    rebuilt = iv.matched_from(method, 1, info)
    assert all(torch.equal(rebuilt.alphas[n], iv.random_control(method, 1, info["strength"]).alphas[n])
               for n in method.alphas)


def test_a_perplexity_matched_control_run_costs_what_the_method_costs(fitted, monkeypatch):
    lm, _ = fitted
    cfg = EvalConfig(model=lm.name, method="damp", method_params={"k": 40, "alpha": 0.0}, n_contrast=4,
                     ppl_corpus="wiki", n_ppl=6, ppl_prefix="doc-start", control_seed=2,
                     control_match="perplexity")
    method = experiment.fit_method(EvalConfig(**{**cfg.to_dict(), "control_seed": None,
                                                 "control_match": "damage"}), lm, progress=False)
    control = experiment.fit_method(cfg, lm, progress=False)
    info = control.describe()["control"]
    assert info["match"] == "perplexity" and info["steps"] >= 1
    ppl = {name: experiment.capability(EvalConfig(**{**cfg.to_dict(), "control_seed": None,
                                                     "control_match": "damage"}) if name == "m" else cfg,
                                       lm, m, progress=False)["perplexity"]["corpus_ppl"]
           for name, m in (("m", method), ("c", control))}
    assert info["target"] == pytest.approx(ppl["m"])  # calibrated on the same 6 texts here
    if info["matched"]:
        assert ppl["c"] == pytest.approx(ppl["m"], rel=0.005)
    # the strength is cached: a second run does not calibrate again
    monkeypatch.setattr(iv, "matched_control", lambda *a, **k: pytest.fail("calibrated twice"))
    again = experiment.fit_method(cfg, lm, progress=False)
    assert again.describe()["control"]["strength"] == info["strength"]
    with pytest.raises(ConfigError, match="control_match"):
        EvalConfig(method="damp", control_match="perplexity")  # no control_seed
    with pytest.raises(ConfigError, match="control_match"):
        EvalConfig(method="damp", control_seed=1, control_match="ppl")
    assert EvalConfig(method="damp", control_seed=1).config_hash == \
        EvalConfig(method="damp", control_seed=1, control_match="damage").config_hash
