"""Tables and figures for the book, computed from committed result files; and the book build.

Every number the book states comes from a function here applied to files under ``results/``: the grid
folder (`grid_folder`: ``$DETOX_RESULTS``, else ``results/default``; ``*.json`` + ``*.samples.csv.gz``
from the batch grid), ``results/localization/*.json`` from the localization notebook and
``results/evaluators/validation.json`` from the evaluator validation.

One module per book page, plus what they share:

- `common`          the results folders, the grid's runs, samples and paired reductions, number and
                    table formatting
- `localization`    book/localization.md and notebooks/localize.ipynb
- `interventions`   book/interventions.md
- `cross_evaluator` book/cross_evaluator.md
- `claims`          book/claims.md
- `cards`           data, model and evaluator cards (book/data_models.md, book/evaluators.md)
- `build`           the book build and ``python -m detox_utils book build|retitle``

Every public name of these modules is available here (``from detox_utils import report;
report.runs()``); the build function itself is ``report.build.build``.
"""
from .. import _progress  # noqa: F401 - filters tqdm's IProgress warning out of the book pages
from . import build
from .build import inputs_fingerprint, main, retitle_notebook
from ..gguf_header import gguf_header, packaged_gguf
from .cards import (VALIDATION_FILE, dataset_card, dataset_card_html, dataset_summary, evaluator_cards,
                    evaluator_validation_table, model_cards, model_scale, plot_evaluator_validation,
                    read_validation, role_overlap)
from .claims import claims_table, plot_reduction_forest
from .common import (DEFAULT_GRID, METHOD_ORDER, METRIC_LABELS, RESULTS, RESULTS_ENV, evaluator_columns,
                     fmt_ci, grid_folder, html_table, method_label, reductions, runs, samples)
from .cross_evaluator import disagreements, pooled_agreement, underestimation_by_run, union_validation
from .interventions import before_after, pareto_front, plot_per_evaluator, plot_tradeoff
from .localization import (SITE_LABELS, early_test_table, load_localization, notebook_links, plot_layer_heatmap,
                           plot_layer_heatmaps, plot_layer_scores, plot_unit_distribution, read_localization)

__all__ = [
    "DEFAULT_GRID", "METHOD_ORDER", "METRIC_LABELS", "RESULTS", "RESULTS_ENV", "SITE_LABELS",
    "VALIDATION_FILE", "before_after", "build", "claims_table", "dataset_card", "dataset_card_html",
    "dataset_summary", "disagreements", "early_test_table", "evaluator_cards", "evaluator_columns",
    "evaluator_validation_table", "fmt_ci", "gguf_header", "grid_folder", "html_table",
    "inputs_fingerprint", "load_localization", "main", "method_label", "model_cards", "model_scale",
    "notebook_links", "packaged_gguf", "pareto_front", "plot_evaluator_validation", "plot_layer_heatmap", "plot_layer_heatmaps", "plot_layer_scores", "plot_per_evaluator",
    "plot_reduction_forest", "plot_tradeoff", "plot_unit_distribution", "pooled_agreement",
    "read_localization", "read_validation", "reductions", "retitle_notebook", "role_overlap", "runs",
    "samples", "underestimation_by_run", "union_validation",
]
