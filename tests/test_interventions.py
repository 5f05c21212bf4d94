"""Interventions: the formulas (golden values), the scoped hooks and weight edits (hook == fold, bit-exact
restore, nothing left behind, clear errors), and the methods (fit, apply, save/load)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from detox_utils import interventions as iv
from detox_utils.archs import out_units
from detox_utils.config import METHOD_PARAMS

TOXIC = ["I hate you, you stupid idiot.", "You are a worthless moron.", "shut up and go away, idiot",
         "stupid moron, I hate you"]
NEUTRAL = ["What a lovely day for a walk.", "The council said the bridge will open.",
           "Thank you so much for your help.", "Shares rose on Monday."]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def lm(request):
    """A tiny GPT-2 (Conv1D, biases) or Llama (Linear, no bias) with random, non-zero biases, so that
    scaling a bias is tested too."""
    lm = request.getfixturevalue(request.param)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in lm.model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return lm


def _ids(lm):
    return lm.tokenizer(["The quick brown fox", "you stupid idiot, shut up"], return_tensors="pt",
                        padding=True)


def _logits(lm):
    with torch.no_grad():
        return lm.model(**_ids(lm)).logits


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_unchanged(model, snapshot):
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), f"parameter {n} changed"
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name}"


def _random_alphas(lm, sites, gen, inputs=False):
    out = {}
    for layer in range(lm.n_layers):
        for site in sites:
            name = lm.arch.module_name(layer, site)
            module = lm.model.get_submodule(name)
            n = module.weight.shape[1 - iv.weight_out_dim(module)] if inputs else out_units(module)
            alpha = torch.rand(n, generator=gen) * 1.5
            alpha[::3] = 1.0  # untouched units
            out[name] = alpha
    return out


# --------------------------------------------------------------------------------------------------
# formulas


def test_aura_alpha_golden():
    # golden values from the formula 1 - 2 (AUROC - 0.5) for AUROC > 0.5, else 1 (Suau et al. 2024)
    auroc = torch.tensor([0.0, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0], dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, 1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)
    assert torch.allclose(iv.aura_alpha(auroc), expected, atol=1e-12)
    # threshold 0.6 (strict): 0.6 stays at 1, 0.75 still gets 0.5
    expected_06 = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.2, 0.0], dtype=torch.float64)
    assert torch.allclose(iv.aura_alpha(auroc, threshold=0.6), expected_06, atol=1e-12)
    assert iv.aura_alpha(torch.rand(3, 4)).shape == (3, 4)


@pytest.mark.parametrize("bad", [[0.2, float("nan")], [1.2], [-0.1]])
def test_aura_alpha_rejects_bad_auroc(bad):
    with pytest.raises(ValueError, match="auroc"):
        iv.aura_alpha(torch.tensor(bad))


def test_aura_alpha_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        iv.aura_alpha(torch.tensor([0.7]), threshold=0.4)


def test_top_k_mask_breaks_ties_by_position():
    scores = {"a": torch.tensor([0.5, 0.9, 0.7]), "b": torch.tensor([0.9, 0.1])}
    masks = iv.top_k_mask(scores, 3)
    assert masks["a"].tolist() == [False, True, True] and masks["b"].tolist() == [True, False]
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        iv.top_k_mask(scores, 6)


def test_meow2x_layer_scores_golden():
    # S_l = mean of the k largest max(d, 0): layer 0 top-2 of (3, 0, 1) -> 2; layer 1 -> 0.5; layer 2 -> 0
    diff = torch.tensor([[3.0, -1.0, 1.0], [0.5, 0.5, 0.5], [-1.0, -2.0, -3.0]])
    assert iv.meow2x_layer_scores(diff, 2).tolist() == [2.0, 0.5, 0.0]


def test_rank_one_update_golden_2x2():
    # hand-computed: W k = (1, 3), u = v - W k = (-1, -3), w = C^-1 k / (k^T C^-1 k) = (1, 0)
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    u, w = iv.rank_one_update(W, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(W + torch.outer(u, w), torch.tensor([[0.0, 2.0], [0.0, 4.0]], dtype=torch.float64))


def test_rank_one_update_golden_with_covariance():
    # hand-computed: k = (1, 1), C^-1 = [[2, 1], [1, 2]] -> C^-1 k = (3, 3), k^T C^-1 k = 6, w = (1/2, 1/2);
    # W k = (3, 7), v = (1, 1), u = (-2, -6), W' = W + u w^T = [[0, 1], [0, 1]]
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    C_inv = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    k = torch.tensor([1.0, 1.0], dtype=torch.float64)
    u, w = iv.rank_one_update(W, k, torch.tensor([1.0, 1.0], dtype=torch.float64), C_inv)
    assert torch.equal(u, torch.tensor([-2.0, -6.0], dtype=torch.float64))
    assert torch.equal(w, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.equal(W + torch.outer(u, w), torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64))


def test_rank_one_update_maps_key_to_value_and_spares_c_orthogonal_keys():
    gen = torch.Generator().manual_seed(0)
    W, k, v = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((4, 3), (3,), (4,)))
    A = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    C = A @ A.T + torch.eye(3, dtype=torch.float64)
    u, w = iv.rank_one_update(W, k, v, torch.linalg.inv(C))
    W_new = W + torch.outer(u, w)
    assert torch.allclose(W_new @ k, v, atol=1e-12)
    # a key x with k^T C^-1 x = 0 is mapped as before (the edit is minimal in the C norm)
    x = torch.linalg.cross(k, torch.randn(3, generator=gen, dtype=torch.float64))
    x = C @ x  # then k^T C^-1 x = k . cross(k, r) = 0
    assert torch.allclose(W_new @ x, W @ x, atol=1e-10)


def test_rank_one_update_validates():
    with pytest.raises(ValueError, match="k \\[d_in\\]"):
        iv.rank_one_update(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="must be > 0"):
        iv.rank_one_update(torch.eye(2), torch.zeros(2), torch.zeros(2))


def test_bound_norm():
    u, w = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])  # ||u w^T||_F = 5 * 2 = 10
    u2, w2 = iv.bound_norm(u, w, 4.0)
    assert math.isclose(float(torch.linalg.matrix_norm(torch.outer(u2, w2))), 4.0, rel_tol=1e-6)
    assert torch.allclose(torch.outer(u2, w2), 0.4 * torch.outer(u, w))
    u3, w3 = iv.bound_norm(u, w, 10.0)
    assert u3 is u and w3 is w
    with pytest.raises(ValueError, match="max_fro"):
        iv.bound_norm(u, w, -1.0)


# --------------------------------------------------------------------------------------------------
# layout, hooks and folded edits


def test_weight_matrix_is_math_layout(lm):
    name = lm.arch.module_name(1, "out")
    module = lm.model.get_submodule(name)
    x = torch.randn(5, module.weight.shape[1 - iv.weight_out_dim(module)])
    bias = module.bias if module.bias is not None else 0
    with torch.no_grad():
        assert torch.allclose(module(x), x @ iv.weight_matrix(module).T + bias, atol=1e-6)
    u, w = torch.randn(out_units(module)), torch.randn(x.shape[1])
    assert torch.equal(iv.rank_one_delta(module, u, w).movedim(iv.weight_out_dim(module), 0), torch.outer(u, w))


def test_scale_units_hook_equals_fold(lm):
    alphas = _random_alphas(lm, lm.arch.linear_sites(), torch.Generator().manual_seed(0))
    base, snap = _logits(lm), _snapshot(lm.model)
    with iv.scale_units(lm.model, alphas, fold=False):
        hooked = _logits(lm)
    with iv.scale_units(lm.model, alphas, fold=True):
        folded = _logits(lm)
    _assert_unchanged(lm.model, snap)
    assert (hooked - base).abs().max() > 1e-3  # the intervention does something
    assert torch.allclose(hooked, folded, atol=1e-5)
    assert torch.equal(_logits(lm), base)


def test_scale_units_multiplies_the_output(lm):
    name = lm.arch.module_name(0, "pre")
    module = lm.model.get_submodule(name)
    alpha = torch.linspace(0, 2, out_units(module))
    x = torch.randn(2, 3, module.weight.shape[1 - iv.weight_out_dim(module)])
    with torch.no_grad():
        plain = module(x)
        for fold in (False, True):
            with iv.scale_units(lm.model, {name: alpha}, fold=fold):
                assert torch.allclose(module(x), plain * alpha, atol=1e-6)


def test_scale_inputs_hook_equals_fold_and_multiplies_the_input(lm):
    alphas = _random_alphas(lm, ("post",), torch.Generator().manual_seed(0), inputs=True)
    base, snap = _logits(lm), _snapshot(lm.model)
    with iv.scale_inputs(lm.model, alphas, fold=False):
        hooked = _logits(lm)
    with iv.scale_inputs(lm.model, alphas, fold=True):
        folded = _logits(lm)
    _assert_unchanged(lm.model, snap)
    assert (hooked - base).abs().max() > 1e-3
    assert torch.allclose(hooked, folded, atol=1e-5)
    name = lm.arch.module_name(2, "post")
    module = lm.model.get_submodule(name)
    x = torch.randn(4, alphas[name].numel())
    with torch.no_grad(), iv.scale_inputs(lm.model, {name: alphas[name]}, fold=True):
        scaled = module(x)
    with torch.no_grad():
        assert torch.allclose(scaled, module(x * alphas[name]), atol=1e-6)


def test_edit_weights_hook_equals_fold(lm):
    gen = torch.Generator().manual_seed(0)
    edits = {}
    for layer in (0, 2):
        module = lm.model.get_submodule(lm.arch.module_name(layer, "out"))
        edits[lm.arch.module_name(layer, "out")] = (
            torch.randn(out_units(module), generator=gen),
            torch.randn(module.weight.shape[1 - iv.weight_out_dim(module)], generator=gen))
    base, snap = _logits(lm), _snapshot(lm.model)
    name = lm.arch.module_name(0, "out")
    with iv.edit_weights(lm.model, edits, fold=True):
        folded = _logits(lm)
        W = iv.weight_matrix(lm.model.get_submodule(name))
        assert torch.allclose(W, iv.weight_matrix(_module_from(snap, lm, name)) + torch.outer(*edits[name]))
    with iv.edit_weights(lm.model, edits, fold=False):
        hooked = _logits(lm)
    _assert_unchanged(lm.model, snap)
    assert (folded - base).abs().max() > 1e-3
    assert torch.allclose(hooked, folded, atol=1e-5)


def _module_from(snapshot, lm, name):
    """A copy of module ``name`` carrying its snapshot weight."""
    import copy

    module = copy.deepcopy(lm.model.get_submodule(name))
    with torch.no_grad():
        module.weight.copy_(snapshot[f"{name}.weight"])
    return module


@pytest.mark.parametrize("fold", [False, True])
def test_alpha_one_changes_nothing(lm, fold):
    ones = {n: torch.ones_like(a) for n, a in
            _random_alphas(lm, lm.arch.linear_sites(), torch.Generator().manual_seed(0)).items()}
    ones_in = {n: torch.ones_like(a) for n, a in
               _random_alphas(lm, ("post",), torch.Generator().manual_seed(0), inputs=True).items()}
    base = _logits(lm)
    with iv.scale_units(lm.model, ones, fold=fold), iv.scale_inputs(lm.model, ones_in, fold=fold):
        assert torch.equal(_logits(lm), base)


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("kind", ["units", "inputs", "edit"])
def test_restore_is_bit_exact_after_an_exception(lm, fold, kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "units":
        ctx = iv.scale_units(lm.model, _random_alphas(lm, lm.arch.linear_sites(), gen), fold=fold)
    elif kind == "inputs":
        ctx = iv.scale_inputs(lm.model, _random_alphas(lm, ("post",), gen, inputs=True), fold=fold)
    else:
        name = lm.arch.module_name(1, "out")
        ctx = iv.edit_weights(lm.model, {name: (torch.randn(lm.d_model), torch.randn(lm.d_mlp))}, fold=fold)
    snap = _snapshot(lm.model)
    with pytest.raises(RuntimeError, match="boom"), ctx:
        _logits(lm)
        raise RuntimeError("boom")
    _assert_unchanged(lm.model, snap)


def test_nested_edits_of_one_module_restore_bit_exact(lm):
    name = lm.arch.module_name(1, "out")
    snap = _snapshot(lm.model)
    alpha = torch.rand(lm.d_model)
    with iv.edit_weights(lm.model, {name: (torch.randn(lm.d_model), torch.randn(lm.d_mlp))}), \
            iv.scale_units(lm.model, {name: alpha}, fold=True), \
            iv.scale_inputs(lm.model, {name: torch.rand(lm.d_mlp)}, fold=True):
        _logits(lm)
    _assert_unchanged(lm.model, snap)


def test_validation_errors_touch_nothing(tiny_gpt2):
    model = tiny_gpt2.model
    good = "transformer.h.0.mlp.c_fc"
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="transformer.h.0.mlp.c_fc"), \
            iv.scale_units(model, {good: torch.full((64,), 0.5), "transformer.h.0.mlp.c_fcx": torch.ones(64)},
                           fold=True):
        pass
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="expected 64"), iv.scale_units(model, {good: torch.ones(63)}):
        pass
    with pytest.raises(ValueError, match="1-D"), iv.scale_units(model, {good: torch.ones(2, 32)}):
        pass
    nan = torch.ones(64)
    nan[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"), iv.scale_units(model, {good: nan}, fold=True):
        pass
    with pytest.raises(TypeError, match="LayerNorm"), iv.scale_units(model, {"transformer.h.0.ln_1": torch.ones(32)}):
        pass
    proj = "transformer.h.0.mlp.c_proj"
    with pytest.raises(ValueError, match="expected 64"), iv.scale_inputs(model, {proj: torch.ones(32)}):
        pass
    with pytest.raises(TypeError, match="pair"), iv.edit_weights(model, {proj: torch.ones(32)}):
        pass
    with pytest.raises(TypeError, match="lm.model"), iv.scale_units(tiny_gpt2, {good: torch.ones(64)}):
        pass
    _assert_unchanged(model, snap)


# --------------------------------------------------------------------------------------------------
# methods


def _aurocs(lm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {lm.arch.module_name(layer, site): torch.rand(out_units(lm.model.get_submodule(
        lm.arch.module_name(layer, site))), generator=gen, dtype=torch.float64)
        for site in lm.arch.linear_sites() for layer in range(lm.n_layers)}


def _second_moments(lm, gen):
    keys = torch.randn(lm.n_layers, 200, lm.d_mlp, generator=gen, dtype=torch.float64)
    return keys.mean(dim=1), keys.transpose(1, 2) @ keys / 200


def _methods(lm):
    """One instance of every method, built from synthetic statistics."""
    common = {"model_name": lm.name, "family": lm.arch.family}
    gen = torch.Generator().manual_seed(0)
    neutral_mean, second = _second_moments(lm, gen)
    return [
        iv.NoIntervention.from_stats(**common),
        iv.Aura.from_stats(_aurocs(lm), **common, auroc_threshold=0.5),
        iv.Det0.from_stats(_aurocs(lm), **common, k=20),
        iv.Damp.from_stats(_aurocs(lm), **common, k=20, alpha=0.5),
        iv.Meow2X.from_stats(torch.randn(lm.n_layers, lm.d_mlp, generator=gen), **common,
                             n_layers=2, k_neurons=8, scale=0.0),
        iv.Trne.from_stats(lm.model, model_name=lm.name, layer_scores=torch.tensor([0.1, 0.3, 0.2]),
                           toxic_mean=neutral_mean + 1.0, neutral_mean=neutral_mean,
                           neutral_second_moment=second, n_layers=2, rho=0.5, ridge=0.01),
    ]


def test_every_method_is_in_the_table_with_the_config_parameters():
    assert set(iv.METHODS) == set(METHOD_PARAMS)
    for name, cls in iv.METHODS.items():
        assert cls.name == name


def test_methods_hook_equals_fold_and_restore(lm):
    base, snap = _logits(lm), _snapshot(lm.model)
    for method in _methods(lm):
        with method.apply(lm, fold=False) as applied:
            assert applied is lm
            hooked = _logits(lm)
        with method.apply(lm, fold=True):
            folded = _logits(lm)
        _assert_unchanged(lm.model, snap)
        assert torch.allclose(hooked, folded, atol=1e-5), method.name
        assert torch.equal(hooked, base) == (method.name == "none"), method.name
        assert set(method.params) == set(METHOD_PARAMS[method.name])


def test_save_load_round_trip(lm, tmp_path):
    for method in _methods(lm):
        path = method.save(tmp_path / f"{method.name}.pt")
        loaded = iv.load(path, lm=lm)
        assert type(loaded) is type(method)
        assert loaded.describe() == method.describe()
        json.dumps(method.describe(), allow_nan=False)  # a JSON-able summary
        assert dict(loaded.params) == dict(method.params)
        with method.apply(lm, fold=True):
            expected = _logits(lm)
        with loaded.apply(lm, fold=True):
            assert torch.equal(_logits(lm), expected)


def test_load_errors(tiny_gpt2, tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError):
        iv.load(tmp_path / "missing.pt")
    (tmp_path / "notes.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not an intervention file"):
        iv.load(tmp_path / "notes.json")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an intervention file"):
        iv.load(tmp_path / "other.pt")
    path = _methods(tiny_gpt2)[1].save(tmp_path / "aura.pt")
    with pytest.raises(ValueError, match="fitted on 'tiny-gpt2'"):
        iv.load(path, lm=tiny_llama)
    with pytest.raises(ValueError, match="fitted on 'tiny-gpt2'"), iv.load(path).apply(tiny_llama):
        pass


def test_aura_det0_damp_alphas(tiny_llama):
    lm, aurocs = tiny_llama, _aurocs(tiny_llama)
    common = {"model_name": lm.name, "family": lm.arch.family}
    aura = iv.Aura.from_stats(aurocs, **common, auroc_threshold=0.5)
    for name, a in aurocs.items():
        assert torch.allclose(aura.alphas[name], iv.aura_alpha(a).float())
    det0 = iv.Det0.from_stats(aurocs, **common, k=7)
    damp = iv.Damp.from_stats(aurocs, **common, k=7, alpha=0.25)
    threshold = torch.cat(list(aurocs.values())).topk(7).values.min()
    for name, a in aurocs.items():
        assert torch.equal(det0.alphas[name] == 0, a >= threshold)
        assert torch.equal(damp.alphas[name], torch.where(a >= threshold, 0.25, 1.0))
    assert det0.describe()["n_units_touched"] == 7
    assert sum(det0.describe()["units_by_site"].values()) == 7
    with pytest.raises(ValueError, match="k must be an integer"):
        iv.Det0.from_stats(aurocs, **common, k=0)
    with pytest.raises(ValueError, match="'alpha'"):
        iv.Damp.from_stats(aurocs, **common, k=3, alpha=-1.0)


def test_meow2x_picks_layers_and_neurons(tiny_gpt2):
    lm = tiny_gpt2
    diff = torch.full((3, lm.d_mlp), -0.1)
    diff[1, [4, 9, 20]] = torch.tensor([3.0, 2.0, 1.0])  # S_1 = (3 + 2) / 2 = 2.5
    diff[2, [0, 1]] = torch.tensor([2.0, 2.0])  # S_2 = 2.0
    diff[0, 5] = 4.0  # S_0 = (4 + 0) / 2 = 2.0: ties with layer 2 and wins by position
    method = iv.Meow2X.from_stats(diff, model_name=lm.name, family="gpt2", n_layers=2, k_neurons=2, scale=0.1)
    assert method.layer_scores.tolist() == [2.0, 2.5, 2.0]
    assert sorted(method.alphas) == [lm.arch.module_name(0, "post"), lm.arch.module_name(1, "post")]
    # only neurons with a positive difference are scaled: layer 0 has one
    assert (method.alphas[lm.arch.module_name(0, "post")] != 1).nonzero().flatten().tolist() == [5]
    assert (method.alphas[lm.arch.module_name(1, "post")] != 1).nonzero().flatten().tolist() == [4, 9]
    assert method.describe()["layers"] == [0, 1] and method.describe()["n_units_touched"] == 3


def test_trne_edit_maps_toxic_key_to_neutral_value_and_respects_the_bound(lm):
    gen = torch.Generator().manual_seed(0)
    neutral_mean, second = _second_moments(lm, gen)
    toxic_mean = neutral_mean + torch.randn(neutral_mean.shape, generator=gen, dtype=torch.float64)
    stats = dict(layer_scores=torch.tensor([0.3, 0.1, 0.2]), toxic_mean=toxic_mean,
                 neutral_mean=neutral_mean, neutral_second_moment=second, ridge=0.0)
    loose = iv.Trne.from_stats(lm.model, model_name=lm.name, n_layers=1, rho=1e6, **stats)
    name = lm.arch.module_name(0, "out")
    assert list(loose.edits) == [name]
    module = lm.model.get_submodule(name)
    W = iv.weight_matrix(module).detach().double()
    with loose.apply(lm, fold=True):
        W_new = iv.weight_matrix(module).detach().double()
    assert torch.allclose(W_new @ toxic_mean[0], W @ neutral_mean[0], atol=1e-4)
    tight = iv.Trne.from_stats(lm.model, model_name=lm.name, n_layers=2, rho=0.01, **stats)
    assert tight.describe()["layers"] == [0, 2]
    for edit_name, (u, w) in tight.edits.items():
        W = iv.weight_matrix(lm.model.get_submodule(edit_name)).detach()
        delta = torch.linalg.matrix_norm(torch.outer(u, w))
        assert delta <= 0.01 * torch.linalg.matrix_norm(W) * (1 + 1e-5)
        assert tight.edit_stats[edit_name]["unbounded_delta_fro"] > tight.edit_stats[edit_name]["delta_fro"]
    with pytest.raises(ValueError, match="'rho'"):
        iv.Trne.from_stats(lm.model, model_name=lm.name, n_layers=1, rho=0.0, **stats)


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_fit_end_to_end(tiny_llama, method):
    params = {"k": 10} if method in ("det0", "damp") else {"n_layers": 2, "k_neurons": 4} \
        if method == "meow2x" else {"n_layers": 1} if method == "trne" else {}
    fitted = iv.fit(method, tiny_llama, TOXIC, NEUTRAL, progress=False, **params)
    assert fitted.name == method and fitted.model_name == tiny_llama.name
    assert fitted.provenance["n_toxic"] == len(TOXIC)
    snap = _snapshot(tiny_llama.model)
    with fitted.apply(tiny_llama, fold=False):
        hooked = _logits(tiny_llama)
    with fitted.apply(tiny_llama, fold=True):
        assert torch.allclose(_logits(tiny_llama), hooked, atol=1e-5)
    _assert_unchanged(tiny_llama.model, snap)


def test_fit_rejects_bad_arguments(tiny_gpt2):
    with pytest.raises(ValueError, match="unknown method"):
        iv.fit("rome", tiny_gpt2, TOXIC, NEUTRAL)
    with pytest.raises(TypeError, match="allowed: \\['k'\\]"):
        iv.fit("det0", tiny_gpt2, TOXIC, NEUTRAL, alpha=0.3)
    with pytest.raises(TypeError, match="toxic_texts"):
        iv.fit("aura", tiny_gpt2, "one string", NEUTRAL)


@pytest.mark.parametrize("method,params", [
    ("aura", {}), ("det0", {"k": 5}), ("damp", {"k": 5, "alpha": 0.5}),
    ("meow2x", {"n_layers": 1, "k_neurons": 4, "scale": 0.5}), ("trne", {"n_layers": 1, "rho": 0.1}),
])
def test_every_method_runs_in_bfloat16_and_restores_exactly(method, params):
    """The `dtype` parameter: fit, fold, generate and score perplexity on a bfloat16 model."""
    from detox_utils import generation, metrics

    from detox_utils import models

    lm = models.tiny("llama")
    lm.model.to(torch.bfloat16)
    toxic, neutral = ["you are an idiot and a fool"] * 6, ["the weather is nice today"] * 6
    fitted = iv.fit(method, lm, toxic, neutral, progress=False, **params)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with fitted.apply(lm, fold=True):
        out = generation.generate(lm, ["hello there"], n_samples=2, max_new_tokens=4, seed=0,
                                  progress=False)
        ppl = metrics.perplexity(lm, neutral[:3], progress=False)
    assert len(out) == 2 and math.isfinite(ppl["corpus_ppl"])
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
