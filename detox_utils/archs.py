"""Architecture knowledge as data: where each family keeps its MLP, and how its weights are laid out.

One `ArchSpec` per model family (keyed by ``config.model_type``). Code elsewhere never branches on the
family; it asks the table.

Sites (TransformerLens hook names in `TL_HOOKS`, e.g. ``blocks.{L}.mlp.hook_post``):

============  ===========================================================  ===========  =========
site          what it is                                                   width        captured
============  ===========================================================  ===========  =========
``pre``       input of the nonlinearity: GPT-2 ``c_fc`` output / GLU gate  d_mlp        output
``up``        GLU models only: the ``up_proj`` output (the linear branch)  d_mlp        output
``post``      output of the nonlinearity (GLU: act(gate) * up), i.e. the   d_mlp        input
              input of the output projection: "the MLP neurons"
``out``       output of the output projection (the MLP's contribution)     d_model      output
============  ===========================================================  ===========  =========

``pre``, ``up`` and ``out`` are outputs of linear modules: together they are AURA's "units"
(every output unit of every MLP linear layer). ``post`` is captured with a forward *pre*-hook on the
output projection. A GPT-2 ``Conv1D`` stores its weight as ``[in, out]`` (``y = x @ W + b``); an
``nn.Linear`` stores ``[out, in]`` (``y = x @ W.T + b``): `ArchSpec.weight_layout` says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch

Capture = Literal["output", "input"]
Layout = Literal["linear", "conv1d"]

SITES: tuple[str, ...] = ("pre", "up", "post", "out")
LINEAR_SITES: tuple[str, ...] = ("pre", "up", "out")
# TransformerLens hook of each site, relative to ``blocks.{L}`` (HookedTransformer and TransformerBridge)
TL_HOOKS: dict[str, str] = {
    "pre": "mlp.hook_pre",
    "up": "mlp.hook_pre_linear",
    "post": "mlp.hook_post",
    "out": "hook_mlp_out",
}


@dataclass(frozen=True)
class Site:
    """One place inside an MLP block. ``module`` is relative to the block (e.g. ``mlp.c_fc``)."""

    module: str
    capture: Capture
    width: Literal["d_mlp", "d_model"]


@dataclass(frozen=True)
class ArchSpec:
    """Where the blocks and MLP sites of one family live and how its MLP weights are stored."""

    family: str
    blocks: str  # dotted path from the CausalLM to the ModuleList of blocks
    sites: Mapping[str, Site]
    weight_layout: Layout
    final_norm: str  # dotted path of the final norm (for stopping / logit lens)
    glu: bool = field(default=False)

    def block_path(self, layer: int) -> str:
        return f"{self.blocks}.{layer}"

    def module_name(self, layer: int, site: str) -> str:
        """Full ``named_modules()`` name of the module carrying ``site`` at ``layer``."""
        return f"{self.blocks}.{layer}.{self._site(site).module}"

    def capture(self, site: str) -> Capture:
        return self._site(site).capture

    def linear_sites(self) -> tuple[str, ...]:
        """Sites that are outputs of a linear module (AURA's units), in forward order."""
        return tuple(s for s in LINEAR_SITES if s in self.sites)

    def output_projection(self, layer: int) -> str:
        """Name of the MLP output projection (``c_proj`` / ``down_proj`` / ``dense_4h_to_h``)."""
        return self.module_name(layer, "out")

    def hook_name(self, layer: int, site: str) -> str:
        """Canonical TransformerLens name of a site, e.g. ``blocks.3.mlp.hook_post`` (see `TL_HOOKS`)."""
        self._site(site)
        return f"blocks.{layer}.{TL_HOOKS[site]}"

    def _site(self, site: str) -> Site:
        if site not in self.sites:
            raise ValueError(
                f"site {site!r} does not exist for family {self.family!r}; "
                f"allowed: {sorted(self.sites)}"
            )
        return self.sites[site]


def _glu(family: str, blocks: str = "model.layers", final_norm: str = "model.norm") -> ArchSpec:
    return ArchSpec(
        family=family,
        blocks=blocks,
        sites={
            "pre": Site("mlp.gate_proj", "output", "d_mlp"),
            "up": Site("mlp.up_proj", "output", "d_mlp"),
            "post": Site("mlp.down_proj", "input", "d_mlp"),
            "out": Site("mlp.down_proj", "output", "d_model"),
        },
        weight_layout="linear",
        final_norm=final_norm,
        glu=True,
    )


ARCHS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        family="gpt2",
        blocks="transformer.h",
        sites={
            "pre": Site("mlp.c_fc", "output", "d_mlp"),
            "post": Site("mlp.c_proj", "input", "d_mlp"),
            "out": Site("mlp.c_proj", "output", "d_model"),
        },
        weight_layout="conv1d",
        final_norm="transformer.ln_f",
    ),
    "gpt_neox": ArchSpec(
        family="gpt_neox",
        blocks="gpt_neox.layers",
        sites={
            "pre": Site("mlp.dense_h_to_4h", "output", "d_mlp"),
            "post": Site("mlp.dense_4h_to_h", "input", "d_mlp"),
            "out": Site("mlp.dense_4h_to_h", "output", "d_model"),
        },
        weight_layout="linear",
        final_norm="gpt_neox.final_layer_norm",
    ),
    "llama": _glu("llama"),
    "mistral": _glu("mistral"),
    "qwen2": _glu("qwen2"),
    "gemma": _glu("gemma"),
    "gemma2": _glu("gemma2"),
    "gemma3_text": _glu("gemma3_text"),
}


def arch_for(model_or_type: torch.nn.Module | str) -> ArchSpec:
    """The `ArchSpec` of a model (by its ``config.model_type``) or of a ``model_type`` string."""
    model_type = (
        model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    )
    if model_type not in ARCHS:
        raise ValueError(
            f"architecture {model_type!r} is not in the table; supported: {sorted(ARCHS)}. "
            "Add an ArchSpec entry to detox_utils/archs.py."
        )
    return ARCHS[model_type]


def n_layers(model: torch.nn.Module) -> int:
    return len(model.get_submodule(arch_for(model).blocks))


def out_units(module: torch.nn.Module) -> int:
    """Number of output units of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return module.nf
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def weight_out_dim(module: torch.nn.Module) -> int:
    """The dimension of ``module.weight`` that indexes output units (0 for Linear, 1 for Conv1D)."""
    if isinstance(module, torch.nn.Linear):
        return 0
    if type(module).__name__ == "Conv1D":
        return 1
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")
