"""The architecture table against real transformers modules of every family (tiny random models)."""
from __future__ import annotations

import pytest
import torch

from detox_utils import archs, models

TEXTS = ["The capital of France is", "you stupid idiot"]


def _capture(lm, layer: int, site: str) -> torch.Tensor:
    """What a hook placed as the table says sees at ``site`` during a forward pass on TEXTS."""
    module = lm.model.get_submodule(lm.arch.module_name(layer, site))
    seen = []
    if lm.arch.capture(site) == "output":
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        batch = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            lm.model(**batch)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def _mlp_io(lm, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of the whole MLP block of ``layer``."""
    mlp = lm.model.get_submodule(f"{lm.arch.block_path(layer)}.mlp")
    seen = {}

    def hook(module, args, out):
        seen["in"], seen["out"] = args[0].detach(), out.detach()

    handle = mlp.register_forward_hook(hook)
    try:
        batch = lm.tokenizer(TEXTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            lm.model(**batch)
    finally:
        handle.remove()
    return seen["in"], seen["out"]


def test_every_tiny_family_is_in_the_table():
    for family in models.TINY_FAMILIES:
        assert archs.arch_for(family).family == family


def test_sites_resolve_in_every_layer(tiny_any):
    lm, arch = tiny_any, tiny_any.arch
    assert arch is archs.arch_for(lm.model)
    assert archs.n_layers(lm.model) == lm.n_layers == lm.model.config.num_hidden_layers
    for layer in range(lm.n_layers):
        for site in arch.sites:
            module = lm.model.get_submodule(arch.module_name(layer, site))
            assert archs.out_units(module) > 0
    lm.model.get_submodule(arch.final_norm)
    assert set(arch.sites) == ({"pre", "up", "post", "out"} if arch.glu else {"pre", "post", "out"})


def test_captured_widths(tiny_any):
    lm = tiny_any
    widths = {"d_mlp": lm.d_mlp, "d_model": lm.d_model}
    assert lm.d_mlp != lm.d_model  # else a swapped width could not be noticed
    for layer in (0, lm.n_layers - 1):
        for site, spec in lm.arch.sites.items():
            acts = _capture(lm, layer, site)
            assert acts.shape[-1] == widths[spec.width], (site, acts.shape)
            assert acts.shape[0] == len(TEXTS)


def test_sites_mean_what_the_table_says(tiny_any):
    """post = act(pre) (GLU: act(pre) * up), out = the MLP block's output."""
    lm = tiny_any
    layer = lm.n_layers - 1
    mlp = lm.model.get_submodule(f"{lm.arch.block_path(layer)}.mlp")
    act = getattr(mlp, "act_fn", None) or mlp.act
    pre, post, out = (_capture(lm, layer, s) for s in ("pre", "post", "out"))
    expected = act(pre) * _capture(lm, layer, "up") if lm.arch.glu else act(pre)
    torch.testing.assert_close(post, expected, rtol=1e-5, atol=1e-6)
    _, mlp_out = _mlp_io(lm, layer)
    torch.testing.assert_close(out, mlp_out)


def test_weight_layout(tiny_any):
    lm, arch = tiny_any, tiny_any.arch
    is_conv = lm.model.config.model_type == "gpt2"
    assert arch.weight_layout == ("conv1d" if is_conv else "linear")
    for site in arch.linear_sites():
        module = lm.model.get_submodule(arch.module_name(0, site))
        assert type(module).__name__ == ("Conv1D" if is_conv else "Linear")
        dim = archs.weight_out_dim(module)
        assert dim == (1 if is_conv else 0)
        assert module.weight.shape[dim] == archs.out_units(module)
        if module.bias is not None:
            assert module.bias.shape == (archs.out_units(module),)


def test_weight_out_dim_indexes_output_units(tiny_any):
    """Zeroing slice j of the weight along weight_out_dim (and bias j) zeroes output unit j only."""
    lm = tiny_any
    site = "pre"
    module = lm.model.get_submodule(lm.arch.module_name(0, site))
    before = _capture(lm, 0, site)
    with torch.no_grad():
        saved_w = module.weight.clone()
        saved_b = None if module.bias is None else module.bias.clone()
        module.weight.index_fill_(archs.weight_out_dim(module), torch.tensor([3]), 0.0)
        if module.bias is not None:
            module.bias[3] = 0.0
    try:
        after = _capture(lm, 0, site)
    finally:
        with torch.no_grad():
            module.weight.copy_(saved_w)
            if saved_b is not None:
                module.bias.copy_(saved_b)
    assert torch.all(after[..., 3] == 0)
    keep = [j for j in range(after.shape[-1]) if j != 3]
    torch.testing.assert_close(after[..., keep], before[..., keep])


def test_linear_sites_in_forward_order():
    assert archs.arch_for("llama").linear_sites() == ("pre", "up", "out")
    assert archs.arch_for("gpt2").linear_sites() == ("pre", "out")


def test_hook_names_are_transformer_lens_names():
    llama, gpt2 = archs.arch_for("llama"), archs.arch_for("gpt2")
    assert llama.hook_name(3, "pre") == "blocks.3.mlp.hook_pre"
    assert llama.hook_name(3, "up") == "blocks.3.mlp.hook_pre_linear"
    assert llama.hook_name(3, "post") == "blocks.3.mlp.hook_post"
    assert gpt2.hook_name(0, "out") == "blocks.0.hook_mlp_out"
    with pytest.raises(ValueError, match="allowed"):
        gpt2.hook_name(0, "up")


def test_unknown_site_and_architecture_are_refused():
    with pytest.raises(ValueError, match=r"allowed: \['out', 'post', 'pre'\]"):
        archs.arch_for("gpt2").module_name(0, "gate")
    with pytest.raises(ValueError, match="supported: .*llama"):
        archs.arch_for("bert")


def test_out_units_refuses_other_modules():
    with pytest.raises(TypeError, match="Linear or Conv1D"):
        archs.out_units(torch.nn.LayerNorm(4))
    with pytest.raises(TypeError, match="Linear or Conv1D"):
        archs.weight_out_dim(torch.nn.Embedding(3, 4))


def test_gemma3_model_type_matches_the_table():
    """Gemma3ForCausalLM (also when loaded from the packaged GGUF: recorded 'gemma3_text' in its
    provenance) reports model_type 'gemma3_text'; the multimodal 'gemma3' is not a causal-LM entry."""
    lm = models.tiny("gemma3_text")
    assert type(lm.model).__name__ == "Gemma3ForCausalLM"
    assert lm.model.config.model_type == "gemma3_text"
    assert lm.arch.family == "gemma3_text"
