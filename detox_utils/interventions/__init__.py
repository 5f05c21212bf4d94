"""Interventions: AURA, Det0, Damp, Meow2X and TRNE behind one context-manager interface.

The modules, generic first:

* `editing`: scoped editing of linear modules, the context managers `scale_units`, `scale_inputs` and
  `edit_weights`, each a hook (``fold=False``) or an in-place weight edit (``fold=True``), both
  restored in ``finally``; `weight_matrix` and `rank_one_delta` for the weight layout;
* `base`: `Method`, the interface every method shares (``.name``, ``.params``, ``.apply(lm, fold)``,
  ``.save(path)``, ``.describe()``), and the baseline `NoIntervention`;
* one module per method family, each with its formulas as pure tensor functions, its classes and
  their fit recipe: `aura` (`aura_alpha`, `top_k_mask`; AURA, Det0, Damp), `meow2x`
  (`meow2x_layer_scores`), `trne` (`rank_one_update`, `bound_norm`, `trne_edit`);
* `controls`: the random-unit controls (`random_control`);
* `methods`: the `METHODS` table, `fit` and `load`.

Every method has a ``from_stats`` constructor that takes precomputed statistics, so it can be built and
tested without recording anything. The equations, and which parts are this compendium's reconstruction
(Meow2X and TRNE: only the paper's abstract is public), are in ``book/methods.md``.
"""
from ..archs import weight_out_dim
from .aura import AUROC_MAX_LENGTH, Aura, Damp, Det0, aura_alpha, top_k_mask
from .base import FORMAT, FORMAT_VERSION, Method, NoIntervention
from .controls import matched_control, matched_from, permuted_alphas, random_control, random_direction_edits
from .editing import (Alphas, Edits, edit_weights, rank_one_delta, scale_inputs, scale_units,
                      weight_matrix)
from .meow2x import Meow2X, meow2x_layer_scores
from .methods import METHODS, fit, load
from .trne import Trne, bound_norm, rank_one_update, trne_edit

__all__ = [
    "AUROC_MAX_LENGTH", "Alphas", "Aura", "Damp", "Det0", "Edits", "FORMAT", "FORMAT_VERSION", "METHODS",
    "Meow2X", "Method", "NoIntervention", "Trne", "aura_alpha", "bound_norm", "edit_weights", "fit",
    "load", "matched_control", "matched_from", "meow2x_layer_scores", "permuted_alphas", "random_control",
    "random_direction_edits",
    "rank_one_delta", "rank_one_update", "scale_inputs", "scale_units", "top_k_mask", "trne_edit",
    "weight_matrix", "weight_out_dim",
]
