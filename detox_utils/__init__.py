"""detox_utils: a thin library behind the toxicity-mitigation compendium.

One module per pipeline stage:

- `models`        load packaged, hub or local causal LMs; the architecture table (`archs`);
                  the packaged GGUF models and their conversion (`packaged`), the GGUF header
                  reader (`gguf_header`)
- `data`          curated toxic / neutral text with provenance, disjoint splits
- `evaluators`    offline toxicity classifiers with one `.score(texts)` interface
- `activations`   record pooled MLP unit responses
- `localization`  score units and layers (AUROC, Cohen's d, mean difference, gradients)
- `interventions` AURA, Det0, Damp, Meow2X, TRNE behind one context-manager interface
- `generation`    seeded, batched sampling of continuations
- `metrics`       toxicity metrics with bootstrap CIs, perplexity, evaluator agreement
- `batch`         the papermill grid runner (local or Dask)
- `report`        tables and figures for the book from committed results
"""
__version__ = "0.1.0"

from ._progress import set_progress  # noqa: E402  (detox_utils.set_progress(False) for batch runs)

__all__ = ["set_progress", "__version__"]
