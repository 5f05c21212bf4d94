"""Cards for the pages "Data and models" (book/data_models.md) and "Evaluators" (book/evaluators.md).

Everything is read from the curated data files, the installed model packages (GGUF headers, read
without loading any weights) and results/evaluators/validation.json.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import results
from ..gguf_header import gguf_header, packaged_gguf
from .common import RESULTS, html_table


def model_cards() -> pd.DataFrame:
    """One column per packaged model: where it comes from, its licence, quantization and shape.

    Shapes and parameter counts are read from the GGUF header in the installed package (no weights
    loaded); when the dequantized fp32 folder is already cached, its recorded parameter count is
    shown next to it as a cross-check.
    """
    import importlib.metadata
    import math
    from collections import Counter

    from .. import models

    cards = {}
    for name in models.available():
        spec = models.PACKAGED[name]
        files, gguf_name, sha = packaged_gguf(name)
        header = gguf_header(files)
        meta, tensors = header["metadata"], header["tensors"]
        arch = meta["general.architecture"]
        n_params = sum(math.prod(shape) for _, shape, _ in tensors)
        by_type, mlp_by_type = Counter(), Counter()
        for tensor, shape, ggml_type in tensors:
            by_type[ggml_type] += math.prod(shape)
            if tensor.split(".")[-2].startswith("ffn_") and len(shape) == 2:
                mlp_by_type[ggml_type] += math.prod(shape)
        stored_bits = sum(n * _bits_per_weight(t) for t, n in by_type.items())
        n_bytes = sum(p.stat().st_size for p in files)
        cached = models.cached_provenance(name)
        cards[name] = {
            "model": spec.title,
            "transformers class": spec.architecture,
            "package (PyPI)": ", ".join(f"{p}=={importlib.metadata.version(p)}" for p in spec.packages),
            "file": gguf_name + (f" (assembled from {len(files)} chunk packages)" if len(files) > 1 else ""),
            "GGUF sha256": sha[:16] + "…",
            "GGUF name field": meta.get("general.name", "(none)"),
            "provenance caveats": spec.note or "(none)",
            "licence": spec.licence,
            "licence field in the GGUF": meta.get("general.license", "(none)"),
            "quantization": spec.quantization,
            "weights by storage type": _shares(by_type),
            "MLP weight matrices by storage type": _shares(mlp_by_type),
            "token embeddings stored as": next(t for n, _, t in tensors if n == "token_embd.weight"),
            "mean bits per weight as stored": f"{stored_bits / n_params:.2f}",
            "GGUF size (MB)": f"{n_bytes / 1e6:.0f}",
            "parameters (from the GGUF tensor table)": f"{n_params / 1e6:.1f} M",
            "parameters (cached fp32 model)": (f"{cached['n_parameters'] / 1e6:.1f} M" if cached
                                               else "not cached yet"),
            "layers": meta[f"{arch}.block_count"],
            "d_model (residual width)": meta[f"{arch}.embedding_length"],
            "d_mlp (MLP hidden width)": meta[f"{arch}.feed_forward_length"],
            "attention heads (query / key-value)":
                f"{meta[f'{arch}.attention.head_count']} / {meta[f'{arch}.attention.head_count_kv']}",
            "context length (tokens)": meta[f"{arch}.context_length"],
            "vocabulary": meta.get("tokenizer.ggml.tokens", "?").strip("[] items"),
        }
    return pd.DataFrame(cards)


def model_scale(cards: pd.DataFrame | None = None) -> dict[str, str]:
    """What the pages say of the packaged models' size, read from their model cards (never typed):
    ``params`` ("134.5 M, 268.1 M and 494.0 M parameters"), ``bits`` ("5.7 to 7.4"), ``n`` ("three")."""
    cards = model_cards() if cards is None else cards
    params = sorted(cards.loc["parameters (from the GGUF tensor table)"], key=lambda v: float(v.split()[0]))
    bits = cards.loc["mean bits per weight as stored"].astype(float)
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
    listed = params[0] if len(params) == 1 else ", ".join(params[:-1]) + " and " + params[-1]
    return {"params": f"{listed} parameters", "bits": f"{bits.min():.1f} to {bits.max():.1f}",
            "n": words.get(len(params), str(len(params)))}


def _bits_per_weight(ggml_type: str) -> float:
    """Bits one weight takes in a GGML storage type (block bytes * 8 / weights per block)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return 8 * nbytes / block


def _shares(counts) -> str:
    """``Q4_1 79%, Q8_0 21%`` (shares of the weights; types under 0.5% are left out)."""
    total = sum(counts.values())
    return ", ".join(f"{t} {n / total:.0%}" for t, n in counts.most_common() if n / total >= 0.005)


def _short(text: str, n: int = 16) -> str:
    return text if len(text) <= n else text[:n] + "…"


def dataset_summary() -> pd.DataFrame:
    """One row per curated data set: role, source package, licence, rows and label balance."""
    from .. import data

    rows = []
    for name in data.available():
        prov, frame = data.provenance(name), data.load(name)
        labelled = frame["label"].dropna()
        rows.append({
            "data set": name,
            "role": prov["role"],
            "package": f"{prov['package']}=={prov['version']}",
            "rows (source → curated)": f"{prov['rows']['source']} → {prov['rows']['curated']}",
            "toxic (label 1)": (f"{int(labelled.sum())} ({labelled.mean():.0%})" if len(labelled)
                                else "unlabelled"),
            "licence (full terms in the card)": prov["licence"].split(";")[0],
        })
    return pd.DataFrame(rows)


def dataset_card(name: str) -> tuple[pd.DataFrame, list[str]]:
    """The provenance of data set ``name`` as a two-column table, and its list of cleaning steps."""
    from .. import data

    prov = data.provenance(name)
    dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in prov.get("dropped", {}).items() if v)
    fields = {
        "role": prov["role"],
        "package": f"{prov['package']}=={prov['version']} (archive {prov['archive']}, "
                   f"sha256 {_short(prov['archive_sha256'])})",
        "member(s)": prov["member"],
        "upstream": prov.get("upstream", ""),
        "licence": prov["licence"],
        "curated file": f"detox_utils/assets/data/{prov['file']} (sha256 {_short(prov['sha256'])}, "
                        f"{prov['bytes'] / 1e3:.0f} kB)",
        "columns": ", ".join(prov["columns"]),
        "rows": f"{prov['rows']['source']} in the source, {prov['rows']['curated']} curated",
        "rows dropped": dropped or "none",
    }
    table = pd.DataFrame({"field": list(fields), "value": list(fields.values())})
    return table, list(prov["cleaning"])


def role_overlap() -> pd.DataFrame:
    """For every pair of roles, how many normalised texts (over all text columns) they share."""
    import itertools

    from .. import data
    from ..curate import role_keys

    keys: dict[str, set[str]] = {}
    for name in data.available():
        frame = data.load(name)
        keys.setdefault(data.DATASETS[name].role, set()).update(
            role_keys(frame.to_dict(orient="records")))
    return pd.DataFrame([
        {"role A": a, "role B": b, "texts in A": len(keys[a]), "texts in B": len(keys[b]),
         "shared texts": len(keys[a] & keys[b])}
        for a, b in itertools.combinations(data.ROLES, 2)
    ])


def dataset_card_html(name: str) -> str:
    """A collapsible card for data set ``name``: provenance table and numbered cleaning steps."""
    import html

    from .. import data

    table, cleaning = dataset_card(name)
    prov = data.provenance(name)
    steps = "".join(f"<li>{html.escape(step)}</li>" for step in cleaning)
    return (f"<details class='detox-card'><summary><strong>{html.escape(name)}</strong>: "
            f"{html.escape(prov['role'])}, {prov['rows']['curated']} rows from "
            f"{html.escape(prov['package'])}=={html.escape(prov['version'])}</summary>"
            f"{html_table(table)}<p>Cleaning applied, in order:</p><ol>{steps}</ol></details>")


VALIDATION_FILE = RESULTS / "evaluators" / "validation.json"


def read_validation(path: str | Path = VALIDATION_FILE) -> dict:
    """The evaluator validation record (``python -m detox_utils.validate_evaluators`` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m detox_utils.validate_evaluators`")
    record = results.read_record(path, "evaluator-validation")
    if not record.get("evaluators"):
        raise ValueError(f"{path} holds no evaluator")
    return record


def evaluator_cards(validation: dict) -> pd.DataFrame:
    """What each evaluator is: package, licence, the score used, its text window; the evaluators
    `detox_utils.evaluators` knows but that were not validated (no checkpoint) say what they need."""
    from .. import evaluators

    rows = []
    for name, entry in validation["evaluators"].items():
        prov = entry["provenance"]
        rows.append({
            "evaluator": name,
            "package": f"{prov['package']}=={prov['version']}",
            "licence": prov["licence"],
            "score used as P(toxic)": prov["p_toxic"],
            "longest text seen at once": (f"{prov['max_tokens']} words; longer texts: max over windows"
                                          if prov.get("max_tokens") else "no limit (bag of words)"),
        })
    needs = evaluators.requirements()
    for name in evaluators.available():
        if name not in validation["evaluators"]:
            rows.append({"evaluator": name, "package": name, "licence": "",
                         "score used as P(toxic)": "not validated here: needs " + needs[name].split(":")[0],
                         "longest text seen at once": ""})
    return pd.DataFrame(rows)


def _operating_point(entry: dict, positives: int, rows: int) -> tuple[float, float]:
    """(false positive rate, true positive rate) of an evaluator at the validation threshold."""
    tp = entry["recall"] * positives
    flagged = entry["positive_rate"] * rows
    return (flagged - tp) / (rows - positives), entry["recall"]


def evaluator_validation_table(validation: dict) -> pd.DataFrame:
    """AUROC (95% bootstrap CI), average precision and the decision at the threshold, per evaluator,
    best AUROC first."""
    n, pos = validation["data"]["rows"], validation["data"]["positives"]
    thr = validation["threshold"]
    rows = []
    for name, e in sorted(validation["evaluators"].items(), key=lambda kv: -kv[1]["auroc"]):
        fpr, _ = _operating_point(e, pos, n)
        rows.append({
            "evaluator": name,
            "AUROC": f"{e['auroc']:.3f}",
            "95% CI": f"{e['auroc_lo']:.3f}–{e['auroc_hi']:.3f}",
            "average precision": f"{e['average_precision']:.3f}",
            f"flagged at ≥ {thr}": f"{e['positive_rate']:.1%}",
            "precision": "–" if e["precision"] is None else f"{e['precision']:.3f}",
            "recall (insults flagged)": f"{e['recall']:.3f}",
            "false positive rate": f"{fpr:.3f}",
            "F1": "–" if e["f1"] is None else f"{e['f1']:.3f}",
        })
    return pd.DataFrame(rows)


def plot_evaluator_validation(validation: dict):
    """Two panels: ROC curves (the threshold's operating point marked) and the share of comments each
    evaluator flags at the threshold against the true share of insults."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    n, pos = validation["data"]["rows"], validation["data"]["positives"]
    thr = validation["threshold"]
    order = sorted(validation["evaluators"], key=lambda k: -validation["evaluators"][k]["auroc"])
    colours = dict(zip(order, sns.color_palette("colorblind", len(order))))
    # drawn at the book's page width (6.3 in at 110 dpi): 7-pt type renders at ~11 px
    with plt.rc_context({"font.size": 7.5, "axes.titlesize": 8, "legend.fontsize": 7}):
        fig, (roc, bars) = plt.subplots(1, 2, figsize=(6.3, 3.6), dpi=110, gridspec_kw={"width_ratios": [1.1, 1]})
        for name in order:
            e = validation["evaluators"][name]
            roc.plot(e["roc"]["fpr"], e["roc"]["tpr"], color=colours[name], lw=1.4,
                     label=f"{name} {e['auroc']:.2f}")
            roc.plot(*_operating_point(e, pos, n), "o", color=colours[name], ms=5, mec="black")
        roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance 0.50")
        roc.plot([], [], "o", color="white", mec="black", label=f"score ≥ {thr}")
        roc.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal",
                xlabel="false-positive rate (non-insults flagged)",
                ylabel="true-positive rate (insults flagged)",
                title=f"ROC, n = {n} comments ({pos} insults)")
        roc.legend(loc="lower right", title="AUROC", title_fontsize=7, borderaxespad=0.2,
                   handlelength=1.2, labelspacing=0.25)
        rates = pd.DataFrame({"evaluator": order,
                              "flagged": [validation["evaluators"][k]["positive_rate"] for k in order]})
        sns.barplot(rates, y="evaluator", x="flagged", hue="evaluator", palette=colours, legend=False,
                    ax=bars)
        bars.axvline(pos / n, color="black", ls="--", lw=1.2, label=f"true share of insults ({pos / n:.0%})")
        bars.legend(loc="lower right")
        for i, value in enumerate(rates["flagged"]):
            bars.text(value, i, f" {value:.0%}", va="center")
        bars.set(xlim=(0, max(rates["flagged"].max(), pos / n) * 1.25), ylabel="",
                 xlabel=f"share of the {n} comments flagged (score ≥ {thr})",
                 title="How much each evaluator flags")
        bars.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        sns.despine(fig)
        fig.tight_layout()
    return fig
