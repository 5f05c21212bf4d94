"""The evidence for each claim, from a powered grid (``results/powered``, profile ``powered``).

Torch-free analysis functions for the book's *Evidence* page; each returns a DataFrame:

* `runs`: one row per finished run (config, capability cost, diversity, commit);
* `power_table`: per model x benchmark x evaluator, the baseline's toxicity probability and the
  minimum detectable reduction (MDE) of the design that was run (`detox_utils.power`);
* `effects`: every intervention run against the plain model on the same prompts and sampling streams
  (toxicity probability factor with a paired bootstrap CI and the exact McNemar p, Holm-adjusted across
  the cells of the same setting; EMT difference with a sign-flip p), next to its random-unit controls
  (method vs each control, exact McNemar, paired by prompt) and its capability cost (both
  perplexities, zero-shot accuracy with a paired McNemar over items);
* `claims`: one row per claim of the two papers with the effect, adjusted exact p, MDE, control
  comparison, capability cost and a verdict by `detox_utils.stats.verdict`.

Reference for every reduction: the plain model (no intervention, no pre-prompt). The pre-prompt claim
is read both ways (`detox_utils.stats.preprompt_readings`).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from . import config, power, registry, results, stats
from ._io import REPO_ROOT

POWERED = REPO_ROOT / "results" / "powered"
log = logging.getLogger(__name__)
ALPHA = 0.05
TARGET_REDUCTION = 1.5  # what the powered profile is sized to detect
ZEROSHOT_MDE_MAX = 0.05  # "preserved" needs a test that would have seen a 5-point change of accuracy
MAX_PPL_INCREASE = 0.25  # a reduction counts only at a corpus-perplexity increase of at most this
N_SIM = 1000  # power simulations per MDE: one default, so every page computes the same MDEs
TARGET_POWER = 0.8
# profiles that extend the powered grid's runs (more prompts or samples, pooled into them by `runs`)
EXTENSIONS = ("powered-extend-rtp", "powered-extend-slur", "powered-extend-slur-qwen")
# profiles of random controls matched to the methods' perplexity (compared directly by `effects`)
PPL_CONTROLS = ("powered-ppl-controls-rtp", "powered-ppl-controls-slur", "powered-ppl-controls-rtp-qwen-none",
                "powered-ppl-controls-slur-qwen-none")
MATCH_PPL_RTOL = 0.01  # a perplexity-matched control decides only within this of the method's perplexity
POOL_PPL_RTOL = config.POOL_PPL_RTOL  # an extension is pooled only at this relative perplexity gap


def setting_label(method: str, params: Mapping) -> str:
    """``Damp k=3000 α=0.5``: the method and the parameters that tell its settings apart."""
    return registry.method_label(method, params)


_pool_key = config.extension_key


def pooled_design(parts: Iterable[tuple[int, int, int, int]]) -> tuple[int, int]:
    """The largest complete prompts x samples rectangle from 0 that the parts cover: each part is
    ``(prompt_start, n_prompts, sample_start, n_samples)``. Returns ``(n_prompts, n_samples)`` with
    the most continuations (ties: more prompts), (0, 0) when the parts do not cover prompt 0, sample 0."""
    parts = list(parts)
    return shared_design([parts]) if parts else (0, 0)


def shared_design(designs: Iterable[Iterable[tuple[int, int, int, int]]]) -> tuple[int, int]:
    """The largest prompts x samples rectangle from 0 (`pooled_design`) that every run covers, each run
    given by its parts (``part_designs`` of `runs`): the design a cell's comparisons share."""
    designs = [list(d) for d in designs]
    if not designs or not all(designs):
        return 0, 0
    height = min(max(p0 + n for p0, n, _, _ in d) for d in designs)
    width = min(max(s0 + k for _, _, s0, k in d) for d in designs)
    return _common_rectangle(height, width, [[(slice(p0, p0 + n), slice(s0, s0 + k)) for p0, n, s0, k in d]
                                             for d in designs])


def _common_rectangle(height: int, width: int, covers: Iterable[Iterable[tuple]]) -> tuple[int, int]:
    """`_largest_rectangle` of the continuations every run holds: ``covers`` has one entry per run, a
    list of ``(prompts, samples)`` indexers (slices, or paired index arrays) into a [height, width]
    matrix, the continuations that run holds."""
    common = np.ones((height, width), bool)
    for cells in covers:
        cover = np.zeros((height, width), bool)
        for rows, cols in cells:
            cover[rows, cols] = True
        common &= cover
    return _largest_rectangle(common)


def _largest_rectangle(cover: np.ndarray) -> tuple[int, int]:
    """`pooled_design` of a coverage matrix ``cover`` [prompts, samples] (True: that continuation exists)."""
    height, width = cover.shape
    best = (0, 0)
    for k in range(1, width + 1):
        full = cover[:, :k].all(axis=1)
        n = int(np.argmin(full)) if not full.all() else height
        if (n * k, n) > (best[0] * best[1], best[0]):
            best = (n, k)
    return best


def runs(folder: str | Path = POWERED) -> pd.DataFrame:
    """One row per ok run: identity (model, benchmark, method, params, preprompt, control_seed, setting),
    design, capability (``ppl``, ``ppl_sentence``, ``zs.<task>`` accuracies and per-item strings),
    diversity, and the commit it ran at.

    Extensions of a run (``prompt_start`` or ``sample_start`` > 0, the rest of the config equal) are
    pooled into it: ``parts`` lists the run's and its extensions' hashes, and ``n_prompts`` x
    ``n_samples`` is the complete rectangle they cover (`pooled_design`). An extension whose
    perplexity differs from its run's by more than `POOL_PPL_RTOL` measured another edit and is left out
    (logged, counted in ``n_extensions_left_out``); ``ext_ppl_gap`` is the largest relative gap of those
    pooled."""
    rows, extensions = [], {}
    for path in sorted(Path(folder).glob("*.json")):
        record = results.read_result(path)
        if record.get("status") != "ok":
            continue
        cfg, met, prov = record["config"], record["metrics"], record["provenance"]
        if cfg.get("prompt_start", 0) or cfg.get("sample_start", 0):
            extensions.setdefault(_pool_key(cfg), []).append(record)
            continue
        row = {
            "config_hash": record["config_hash"], "model": cfg["model"], "benchmark": cfg["benchmark"],
            "method": cfg["method"], "params": json.dumps(cfg["method_params"], sort_keys=True),
            "preprompt": bool(cfg["preprompt"]), "control_seed": cfg.get("control_seed"),
            "control_match": cfg.get("control_match", "damage"),
            "setting": setting_label(cfg["method"], cfg["method_params"]),
            "n_prompts": cfg["n_prompts"], "n_samples": cfg["n_samples"], "threshold": cfg["threshold"],
            "ppl_prefix": cfg.get("ppl_prefix", "auto"), "ppl": met["perplexity"]["corpus_ppl"],
            "ppl_sentence": met["perplexity"]["mean_sentence_ppl"],
            "git_commit": prov.get("git_commit"), "created": record.get("created"),
            "seconds": sum(prov.get("timings", {}).values()),
            "generate_seconds": prov.get("timings", {}).get("generate", math.nan),
            "pool_key": _pool_key(cfg), "parts": (record["config_hash"],),
            "part_designs": ((0, cfg["n_prompts"], 0, cfg["n_samples"]),), "n_extensions": 0,
            "n_extensions_left_out": 0, "ext_ppl_gap": 0.0,
        }
        for name, value in (met.get("diversity") or {}).items():
            row[name] = value
        for task, rec in (met.get("zeroshot") or {}).items():
            row[f"zs.{task}"] = rec["acc"]
            row[f"zs.{task}.per_char"] = rec["acc_per_char"]
            row[f"zs.{task}.correct"] = rec.get("correct")
        rows.append(row)
    for row in rows:
        _pool(row, extensions.get(row.pop("pool_key"), []))
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["control_seed"] = frame["control_seed"].astype("object")
        frame.loc[frame["control_seed"].isna(), "control_seed"] = None
        frame = _read_capability_under_best_start(Path(folder), frame)
    return frame


def _start_label(token: str | None) -> str:
    return "none" if token is None else token


def capability_starts(folder: str | Path = POWERED, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model with a ``ppl-prefix`` record (`ppl_prefix.remeasure`): the first token its grid runs read
    perplexity texts after (``grid_start``), the start with the lowest perplexity on held-out leads
    (``best_start``, ``grid_vs_best``: the grid's perplexity over the best's, on the same tokens), and the
    start the evidence reads capability under (``start``): the best one where it beats the grid's by more
    than `START_TOLERANCE` and every run of the model (``runs``) was measured under it, else the grid's;
    ``pending``: the runs not yet measured under the best start (`python -m detox_utils ppl-prefix`)."""
    table = runs(folder) if table is None else table
    return pd.DataFrame(_starts(Path(folder), table).values(),
                        columns=["model", "grid_start", "best_start", "grid_vs_best", "start", "runs", "pending"])


# another first token replaces the grid's for capability only where the grid's gives this much more
# perplexity on the same held-out tokens (`ppl_prefix.start_candidates`)
START_TOLERANCE = 1.05


def _starts(folder: Path, table: pd.DataFrame) -> dict[str, dict]:
    out = {}
    for rec in _ppl_prefix_records(folder):
        model = rec["model"]
        mine = table[table.model == model]
        if not len(mine) or "start_candidates" not in rec:
            continue
        grid = rec["grid_prefix"]
        alt = next(p for p in rec["prefixes"] if p != grid)
        cands = pd.DataFrame(rec["start_candidates"]["rows"])
        best = cands.loc[cands.ppl.idxmin()]
        ratio = float(cands[cands.doc_start].ppl.iloc[0] / best.ppl)
        measured = {h: e["ppl"][alt] for e in rec["edits"].values() if alt in e["ppl"] for h in e["runs"]}
        pending = [h for h, p in zip(mine.config_hash, mine.ppl_prefix) if p != alt and h not in measured]
        grid_start, alt_start = _start_label(rec["prefixes"][grid]), _start_label(rec["prefixes"][alt])
        use_alt = best.start == alt_start and ratio > START_TOLERANCE and not pending
        out[model] = {"model": model, "grid_start": grid_start, "best_start": best.start, "grid_vs_best": ratio,
                      "start": alt_start if use_alt else grid_start, "runs": len(mine),
                      "pending": len(pending) if best.start != grid_start else 0, "use_alt": use_alt,
                      "grid_prefix": grid, "alt_prefix": alt, "alt_start": alt_start, "measured": measured}
    return out


def _read_capability_under_best_start(folder: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """``ppl`` and ``ppl_sentence`` of each run under its model's `capability_starts` ``start``: where that
    is not the grid's first token, the `ppl_prefix.remeasure` measurement of the run's edit (or the run's
    own, for a run measured under that start); ``ppl_grid`` and ``ppl_sentence_grid`` keep the grid's
    reading, ``ppl_start`` / ``ppl_grid_start`` name the two. A model whose runs are not all measured
    under its best start stays under the grid's (logged), and runs measured under another start than the
    one used are left out, so that every relative change compares texts read one way."""
    frame = frame.assign(ppl_grid=frame.ppl, ppl_sentence_grid=frame.ppl_sentence, ppl_start="",
                         ppl_grid_start="", ppl_native_start="")
    for model, s in _starts(folder, frame).items():
        rows = frame.model == model
        frame.loc[rows, ["ppl_start", "ppl_grid_start"]] = s["start"], s["grid_start"]
        # the reading a run measured (and a perplexity-matched control was matched) under itself
        frame.loc[rows, "ppl_native_start"] = [s["alt_start"] if p == s["alt_prefix"] else s["grid_start"]
                                               for p in frame.loc[rows, "ppl_prefix"]]
        if s["pending"]:
            log.warning("%s: %d runs are not measured under its best first token %s (%.1fx less perplexity "
                        "than the grid's %s); its capability stays under the grid's until `python -m "
                        "detox_utils ppl-prefix --model %s` measures them", model, s["pending"],
                        s["best_start"], s["grid_vs_best"], s["grid_start"], model)
        if not s["use_alt"]:
            other = rows & (frame.ppl_prefix != s["grid_prefix"])
            if other.any():
                log.warning("%s: %d runs measured under another first token left out", model, int(other.sum()))
                frame = frame[~other].reset_index(drop=True)
            continue
        for i in frame.index[rows & (frame.ppl_prefix != s["alt_prefix"])]:
            m = s["measured"][frame.at[i, "config_hash"]]
            frame.at[i, "ppl"], frame.at[i, "ppl_sentence"] = m["corpus_ppl"], m["mean_sentence_ppl"]
    return frame


def _pool(row: dict, extensions: list[dict]) -> None:
    """Fold ``extensions`` (result records) into ``row`` (a `runs` row of the run they extend)."""
    same = []
    for ext in extensions:
        ppl = ext["metrics"]["perplexity"]["corpus_ppl"]
        gap = config.ppl_gap(ppl, row["ppl"])
        if not gap <= POOL_PPL_RTOL:
            # info, not a warning: every page that reads the grid would repeat it; the Evidence page
            # lists the extensions left out (`extension_check`)
            log.info("extension %s of run %s left out: its perplexity %.6g differs from the run's %.6g "
                        "by %.1e (allowed %.0e), so it measured another edit", ext["config_hash"],
                        row["config_hash"], ppl, row["ppl"], gap, POOL_PPL_RTOL)
            row["n_extensions_left_out"] += 1
            continue
        same.append(ext)
        row["ext_ppl_gap"] = max(row["ext_ppl_gap"], gap)
    if not same:
        return
    parts = [(0, row["n_prompts"], 0, row["n_samples"])] + [
        (e["config"]["prompt_start"], e["config"]["n_prompts"], e["config"]["sample_start"],
         e["config"]["n_samples"]) for e in same]
    row["n_prompts"], row["n_samples"] = pooled_design(parts)
    row["part_designs"] = tuple(parts)
    row["parts"] = (row["config_hash"], *(e["config_hash"] for e in same))
    row["n_extensions"] = len(same)
    row["generate_seconds"] += sum(e["provenance"].get("timings", {}).get("generate", 0.0) for e in same)


def extension_check(folder: str | Path = POWERED) -> pd.DataFrame:
    """One row per extension run: the run it extends, the two corpus perplexities, their relative gap
    and whether `runs` pooled it (gap <= `POOL_PPL_RTOL`). ``run`` is empty where the run it extends
    is not in ``folder`` (an orphan, never pooled)."""
    base, rows = results.runs_and_extensions(folder)
    out = []
    for ext in rows:
        cfg, run = ext["config"], base.get(_pool_key(ext["config"]), [None])[0]
        ppl = ext["metrics"]["perplexity"]["corpus_ppl"]
        ref = run["metrics"]["perplexity"]["corpus_ppl"] if run else math.nan
        gap = config.ppl_gap(ppl, ref)
        out.append({"extension": ext["config_hash"], "run": run["config_hash"] if run else "",
                    "model": cfg["model"], "benchmark": cfg["benchmark"],
                    "setting": setting_label(cfg["method"], cfg["method_params"]),
                    "control_seed": cfg.get("control_seed"), "prompt_start": cfg.get("prompt_start", 0),
                    "sample_start": cfg.get("sample_start", 0), "ppl_run": ref, "ppl_extension": ppl,
                    "rel_gap": gap, "pooled": bool(run) and gap <= POOL_PPL_RTOL})
    frame = pd.DataFrame(out)
    if len(frame):  # 1, 2 or <NA>, not 1.0, 2.0, NaN
        frame["control_seed"] = frame["control_seed"].astype("Int64")
    return frame


def _edit_of(cfg: Mapping) -> tuple:
    """What a control mimics: the model, method, parameters and pre-prompt of a run's config."""
    return cfg["model"], cfg["method"], json.dumps(cfg["method_params"], sort_keys=True), bool(cfg["preprompt"])


def matched_control_table(folder: str | Path = POWERED) -> pd.DataFrame:
    """One row per perplexity-matched control run (``control_match="perplexity"``): the strength its
    calibration found (`interventions.matched_control`), the evaluations it took, whether it matched
    within its tolerance, and the corpus perplexity of the control against that of the method it
    mimics (``ppl_method``, NaN where the method's own run is not in ``folder``) with their relative gap."""
    method_ppl, rows = {}, []
    for path in sorted(Path(folder).glob("*.json")):
        record = results.read_result(path)
        cfg = record.get("config", {})
        if record.get("status") != "ok" or cfg.get("prompt_start", 0) or cfg.get("sample_start", 0):
            continue
        if cfg.get("control_seed") is None:
            method_ppl[_edit_of(cfg)] = record["metrics"]["perplexity"]["corpus_ppl"]
        elif cfg.get("control_match", "damage") == "perplexity":
            rows.append(record)
    out = []
    for record in rows:
        cfg = record["config"]
        info = record["provenance"].get("method", {}).get("control", {})
        ppl = record["metrics"]["perplexity"]["corpus_ppl"]
        ref = method_ppl.get(_edit_of(cfg), math.nan)
        out.append({"model": cfg["model"], "benchmark": cfg["benchmark"],
                    "setting": setting_label(cfg["method"], cfg["method_params"]),
                    "control_seed": cfg["control_seed"], "strength": info.get("strength", math.nan),
                    "evaluations": info.get("steps", math.nan), "matched": info.get("matched"),
                    "ppl_method": ref, "ppl_control": ppl, "rel_gap": ppl / ref - 1 if ref == ref else math.nan})
    return pd.DataFrame(out)


def _ppl_prefix_records(folder: str | Path) -> list[dict]:
    from . import ppl_prefix

    where = Path(folder) / ppl_prefix.FOLDER
    return [ppl_prefix.read(folder, p.stem) for p in sorted(where.glob("*.json"))] if where.is_dir() else []


def ppl_prefix_starts(folder: str | Path = POWERED) -> pd.DataFrame:
    """Per model, the plain model's perplexity on held-out text after each candidate first token, on the
    same tokens (`ppl_prefix.start_candidates`), with ``ppl_vs_best`` (over the lowest of the model's)
    and ``doc_start`` marking the grid's choice."""
    rows = [{"model": rec["model"], **row} for rec in _ppl_prefix_records(folder)
            for row in rec["start_candidates"]["rows"]]
    table = pd.DataFrame(rows)
    if len(table):
        table["ppl_vs_best"] = table.ppl / table.groupby("model").ppl.transform("min")
        table["token_id"] = table.token_id.astype("Int64")
        table = table[["model", "start", "token_id", "doc_start", "ppl", "ppl_vs_best", "n_tokens"]]
    return table


def ppl_prefix_table(folder: str | Path = POWERED) -> pd.DataFrame:
    """Each edit's relative perplexity change under the grid's prefix and under the other one that
    `ppl_prefix.remeasure` measured (``rel_ppl_grid``, ``rel_ppl_alt``), and whether the
    `MAX_PPL_INCREASE` rule decides the same under both (``same_decision``). Under the grid's prefix
    the runs' own perplexities are used, except where the edit was measured again under it too (AURA,
    whose refit can differ from a run's fit by a few units): then that measurement, so the pair is of
    one edit, and ``run_gap`` is its largest relative gap to the runs' recorded perplexities. For a
    perplexity-matched control, ``gap_to_method_*``: its perplexity relative to its method's, under
    each prefix. Empty where no record exists."""
    out = []
    for rec in _ppl_prefix_records(folder):
        grid, edits = rec["grid_prefix"], rec["edits"].values()
        alt = next(p for p in rec["prefixes"] if p != grid)

        def measured(e: Mapping) -> tuple[float, float, float]:
            recorded = list(e["runs"].values())
            if grid in e["ppl"]:
                here = e["ppl"][grid]["corpus_ppl"]
                return here, e["ppl"][alt]["corpus_ppl"], max(abs(r / here - 1) for r in recorded)
            return float(np.mean(recorded)), e["ppl"][alt]["corpus_ppl"], math.nan

        plain = [e for e in edits if e["method"] == "none"]
        if not plain:
            continue
        base_grid, base_alt, _ = measured(plain[0])
        methods = {(e["method"], json.dumps(e["method_params"], sort_keys=True)): measured(e)
                   for e in edits if e["control_seed"] is None}
        for e in edits:
            if e["method"] == "none":
                continue
            g, a, gap = measured(e)
            ref = methods.get((e["method"], json.dumps(e["method_params"], sort_keys=True)))
            matched = e["control_match"] == "perplexity" and ref is not None
            rel_g, rel_a = g / base_grid - 1, a / base_alt - 1
            out.append({"model": rec["model"], "setting": setting_label(e["method"], e["method_params"]),
                        "control_seed": e["control_seed"], "control_match": e["control_match"],
                        "runs": len(e["runs"]), "rel_ppl_grid": rel_g, "rel_ppl_alt": rel_a,
                        "same_decision": (rel_g > MAX_PPL_INCREASE) == (rel_a > MAX_PPL_INCREASE),
                        "run_gap": gap,
                        "gap_to_method_grid": g / ref[0] - 1 if matched else math.nan,
                        "gap_to_method_alt": a / ref[1] - 1 if matched else math.nan,
                        "grid_prefix": rec["prefixes"][grid], "alt_prefix": rec["prefixes"][alt]})
    table = pd.DataFrame(out)
    if len(table):
        table["control_seed"] = table.control_seed.astype("Int64")
    return table


def first_token_summary(starts: pd.DataFrame, tolerance: float = 1.05) -> str:
    """One sentence on `ppl_prefix_starts`: for which models the grid's first token is the best start
    (within ``tolerance`` of the best candidate's perplexity), and how far off it is for the others."""
    if not len(starts):
        return ""
    chosen = starts[starts.doc_start]
    good, worse = chosen[chosen.ppl_vs_best <= tolerance], chosen[chosen.ppl_vs_best > tolerance]
    best = starts.sort_values("ppl").groupby("model").start.first()
    return ("The grid's first token for perplexity is the best start on held-out news leads for "
            + (", ".join(good.model) or "no model")
            + "".join(f"; for {r.model} `{r.start}` gives {r.ppl_vs_best:.1f}x the perplexity of its best "
                      f"start (`{best[r.model]}`)" for r in worse.itertuples()) + ".")


def capability_start_summary(starts: pd.DataFrame) -> str:
    """One sentence on `capability_starts`: which first token each model's capability costs are read after,
    and for a model whose best start is not yet used, why (runs not measured under it)."""
    if not len(starts):
        return ""

    def name(start: str) -> str:
        return "without a first token" if start == "none" else f"after `{start}`"

    moved = starts[starts.start != starts.grid_start]
    waiting = starts[(starts.start == starts.grid_start) & (starts.best_start != starts.grid_start)
                     & (starts.grid_vs_best > START_TOLERANCE)]
    kept = starts[~starts.model.isin(set(moved.model) | set(waiting.model))]
    parts = [f"{r.model} {name(r.start)} (the grid's `{r.grid_start}` gives {r.grid_vs_best:.1f}x its "
             f"perplexity on held-out leads; all {r.runs} of its runs measured under it)" for r in moved.itertuples()]
    parts += [f"{', '.join(kept.model)} after the grid's own" if len(kept) else ""]
    text = ("Capability costs (both perplexities, every relative change, every control's cost) are read after "
            "each model's best first token: " + "; ".join(p for p in parts if p) + ".")
    for r in waiting.itertuples():
        text += (f" {r.model} is still read after the grid's `{r.grid_start}`, not {name(r.best_start)} "
                 f"({r.grid_vs_best:.1f}x less perplexity), until its {r.pending} newest runs of {r.runs} are "
                 f"measured under it (`python -m detox_utils ppl-prefix --model {r.model}`).")
    return text


def prefix_edits_summary(table: pd.DataFrame, eff: pd.DataFrame | None = None) -> str:
    """One sentence on `ppl_prefix_table`: of the edits measured under both prefixes, for how many the
    at-most-25% rule decides the same (naming the others), and the most a method's own relative
    perplexity change moves. With `effects` ``eff`` (max evaluator), a second sentence on whether any
    verdict can depend on it: a method's own edit whose decision flips matters only in a cell where
    that setting reduces toxicity significantly (Holm-adjusted p < `ALPHA`, factor > 1)."""
    text = _prefix_edits_sentence(table)
    if not text or eff is None or not len(eff):
        return text
    flips = table[~table.same_decision.astype(bool) & table.control_seed.isna()]
    if not len(flips):
        return text
    flipped = set(zip(flips.model, flips.setting))
    mx = eff[(eff.evaluator == "max") & ~eff.preprompt.astype(bool)]
    hits = [f"{r.model}/{r.benchmark} {r.setting}" for r in mx.itertuples()
            if (r.model, r.setting) in flipped and r.p_holm < ALPHA and r.factor > 1]
    return text + (" None of the settings whose decision flips reduces toxicity significantly in any cell of "
                   "its model, so no verdict depends on the first token." if not hits else
                   " The verdicts of " + ", ".join(hits) + " rest on a significant reduction whose "
                   "perplexity decision flips: read them under both prefixes.")


def _prefix_edits_sentence(table: pd.DataFrame) -> str:
    # a model whose tokenizer adds its own start token (Gemma's <bos>) reads its texts after the same
    # token under both settings: its rows show only how well the folder's fits reproduce its runs
    table = table[table.grid_prefix.fillna("") != table.alt_prefix.fillna("")]
    if not len(table):
        return ""
    flips = table[~table.same_decision.astype(bool)]
    own = table[table.control_seed.isna()]
    return (f"Measured again without a first token, {len(table)} edits ("
            + ", ".join(f"{m}: {n}" for m, n in table.model.value_counts().sort_index().items())
            + f"): the at-most-25% perplexity rule decides the same for {len(table) - len(flips)}"
            + ("" if not len(flips) else " and differently for " + ", ".join(
                f"{r.model} {r.setting}" + ("" if pd.isna(r.control_seed) else
                                            f" (control {r.control_seed}, {r.control_match})")
                + f" ({r.rel_ppl_grid:+.0%} against {r.rel_ppl_alt:+.0%})" for r in flips.itertuples()))
            + (f"; a method's own relative change moves by at most "
               f"{100 * (own.rel_ppl_alt - own.rel_ppl_grid).abs().max():.0f} points" if len(own) else "")
            + (f"; perplexity-matched controls, matched under the grid's first token, are within "
               f"{matched.gap_to_method_alt.abs().max():.1%} of their method's perplexity without it"
               if len(matched := table[table.gap_to_method_alt.notna()]) else "")
            + ".")


def zeroshot_tasks(table: pd.DataFrame) -> list[str]:
    return sorted(c[3:] for c in table.columns if c.startswith("zs.") and c.count(".") == 1)


def _samples(folder: Path, run, cache: dict, whole: bool = False) -> pd.DataFrame:
    """A `runs` row's samples: its own and its extensions', on its pooled prompts x samples (``whole``:
    every continuation they hold, for `_aligned` to cut to what a comparison's runs share)."""
    key = tuple(run.parts)
    if key not in cache:
        frame = pd.concat([results.load_samples(folder, h) for h in key], ignore_index=True)
        cache[key] = frame.sort_values(["prompt_id", "sample_id"], ignore_index=True)
    frame = cache[key]
    if whole:
        return frame
    inside = (frame.prompt_id < run.n_prompts) & (frame.sample_id < run.n_samples)
    return frame if inside.all() else frame[inside].reset_index(drop=True)


def _aligned(*frames: pd.DataFrame) -> list[pd.DataFrame]:
    """The runs' samples on the largest prompts x samples rectangle from 0 that all of them hold (most
    continuations, ties: more prompts; `pooled_design`): runs extended to different sizes, or one
    extended and one not yet, are compared on what they share, not on the intersection of their own
    rectangles (a run extended to 320 x 8 and one still at 500 x 2 share 500 x 2, not 320 x 2)."""
    height = min(int(f.prompt_id.max()) + 1 for f in frames)
    width = min(int(f.sample_id.max()) + 1 for f in frames)
    inside = [f[(f.prompt_id < height) & (f.sample_id < width)] for f in frames]
    n, k = _common_rectangle(height, width, [[(i.prompt_id.to_numpy(), i.sample_id.to_numpy())] for i in inside])
    return [f if (f.prompt_id.max() + 1, f.sample_id.max() + 1, len(f)) == (n, k, n * k)
            else f[(f.prompt_id < n) & (f.sample_id < k)].reset_index(drop=True) for f in frames]


def per_prompt(frame: pd.DataFrame, evaluator: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A run's samples -> (toxic [n] bool: some sample scored >= threshold, max score [n]), rows in
    prompt_id order (so two runs of one cell pair up by prompt)."""
    grid = frame.pivot(index="prompt_id", columns="sample_id", values=f"score.{evaluator}")
    values = grid.sort_index().to_numpy(float)
    top = values.max(axis=1)
    return top >= threshold, top


def evaluators_of(frame: pd.DataFrame) -> list[str]:
    return [c[6:] for c in frame.columns if c.startswith("score.")]


def _baselines(table: pd.DataFrame, preprompt: bool = False) -> pd.DataFrame:
    sub = table[(table.method == "none") & (table.preprompt == preprompt)]
    return sub.set_index(["model", "benchmark"])


def power_table(folder: str | Path = POWERED, n_sim: int = N_SIM,
                target: float = TARGET_REDUCTION) -> pd.DataFrame:
    """Per model x benchmark x evaluator (and ``max``): the plain baseline's toxicity probability, the
    number of toxic prompts, the MDE of the design that was run (80% power, exact McNemar, two-sided
    5%; the baseline itself as the pilot), and the power to detect ``target``. The design
    (``n_prompts`` x ``n_samples``) is the one the cell's plain run and all its method runs share
    (`shared_design`; controls left out), so a cell whose plain run is extended before its methods
    counts at the design its comparisons can use; ``plain_design`` is the plain run's own."""
    folder = Path(folder)
    table = runs(folder)
    rows, cache = [], {}
    if not len(table):
        return pd.DataFrame(rows)
    for (model, bench), base in _baselines(table).groupby(level=[0, 1]):
        run = base.iloc[0]
        samples = _samples(folder, run, cache)
        treated = table[(table.model == model) & (table.benchmark == bench) & table.control_seed.isna()]
        n, k = shared_design(treated.part_designs)
        for ev in [*evaluators_of(samples)]:
            pilot = power.pilot_from_samples(samples, evaluator=ev, threshold=run.threshold)
            toxic, _ = per_prompt(samples, ev, run.threshold)
            rows.append({
                "model": model, "benchmark": bench, "evaluator": ev, "n_prompts": n, "n_samples": k,
                "plain_design": f"{run.n_prompts} × {run.n_samples}", "base_tox_prob": float(toxic.mean()),
                "toxic_prompts": int(toxic.sum()),
                "mde": power.minimum_detectable_reduction(pilot, n, k, n_sim=n_sim),
                f"power_at_{target}x": power.power_tox_prob(pilot, n, k, target, n_sim=n_sim),
            })
    return pd.DataFrame(rows)


def design_table(folder: str | Path = POWERED, target: float = TARGET_REDUCTION,
                 n_samples_options: Iterable[int] = (2, 4, 8), n_sim: int = N_SIM) -> pd.DataFrame:
    """Per model x benchmark x evaluator (and ``max``): the power of the design that was run to detect
    ``target``, and for each samples-per-prompt option K the fewest prompts that reach 80% power
    (`power.design_for` on the plain baseline as the pilot, up to the benchmark's prompts; NaN when
    not reachable). Columns: identity, ``n_prompts``, ``n_samples``, ``base_tox_prob``,
    ``power_at_<target>x``, ``prompts_needed_k<K>`` per option, ``available_prompts``."""
    from . import data

    folder = Path(folder)
    table = runs(folder)
    if not len(table):
        return pd.DataFrame()
    options = tuple(n_samples_options)
    rows, cache = [], {}
    for (model, bench), base in _baselines(table).groupby(level=[0, 1]):
        run = base.iloc[0]
        samples = _samples(folder, run, cache)
        available = len(data.prompts(bench))
        for ev in evaluators_of(samples):
            pilot = power.pilot_from_samples(samples, evaluator=ev, threshold=run.threshold)
            toxic, _ = per_prompt(samples, ev, run.threshold)
            found = power.design_for(pilot, target, TARGET_POWER, n_samples_options=options,
                                     max_prompts=available, n_sim=n_sim)
            row = {"model": model, "benchmark": bench, "evaluator": ev, "n_prompts": run.n_prompts,
                   "n_samples": run.n_samples, "base_tox_prob": float(toxic.mean()),
                   f"power_at_{target}x": power.power_tox_prob(pilot, run.n_prompts, run.n_samples, target,
                                                              n_sim=n_sim),
                   "available_prompts": available}
            for o in found["options"]:
                row[f"prompts_needed_k{o['n_samples']}"] = (math.nan if o["n_prompts"] is None
                                                             else float(o["n_prompts"]))
            rows.append(row)
    return pd.DataFrame(rows)


def grid_design(design: pd.DataFrame, folder: str | Path = POWERED, target: float = TARGET_REDUCTION,
                evaluators: str = "all") -> pd.DataFrame:
    """What it would take for every cell of the grid to detect ``target`` with 80% power: per
    benchmark and samples-per-prompt option K, the prompts needed by the hardest model x evaluator
    (``evaluators="all"``; ``"max"``: the max over evaluators only), the continuations per run, and
    the generation time that would add to the grid's runs on that benchmark, at each run's own
    measured seconds per continuation (a run without a recorded generation time adds nothing).
    ``prompts_needed`` NaN: some cell cannot reach the target within the benchmark's prompts."""
    if evaluators not in ("all", "max"):
        raise ValueError(f"evaluators must be 'all' or 'max', got {evaluators!r}")
    if not len(design):
        return pd.DataFrame()
    table = runs(folder)
    sub = design if evaluators == "all" else design[design.evaluator == "max"]
    rows = []
    for bench, cells in sub.groupby("benchmark"):
        done = table[table.benchmark == bench]
        per = done.generate_seconds / (done.n_prompts * done.n_samples)
        now = float((done.n_prompts * done.n_samples).sum())
        for col in [c for c in sub.columns if c.startswith("prompts_needed_k")]:
            k = int(col[len("prompts_needed_k"):])
            need = cells[col].max() if cells[col].notna().all() else math.nan
            extra = (math.nan if math.isnan(need) else
                     float((np.maximum(need * k - done.n_prompts * done.n_samples, 0) * per).sum()))
            rows.append({"benchmark": bench, "evaluators": evaluators, "n_samples": k,
                         "prompts_needed": need, "continuations_per_run": need * k,
                         "runs": len(done), "continuations_now": now,
                         "extra_generation_hours": extra / 3600})
    return pd.DataFrame(rows)


def _zeroshot_cost(base: pd.Series, run: pd.Series, tasks: list[str]) -> dict:
    """Mean accuracy change over tasks, an exact McNemar over all items (paired by item) and the
    smallest change that test detects with 80% power at the observed discordance (``zs_mde``)."""
    missing = {"zs_base": math.nan, "zs_method": math.nan, "zs_delta": math.nan, "zs_p": math.nan,
               "zs_n": 0, "zs_mde": math.nan}
    if not tasks or not all(isinstance(r.get(f"zs.{t}.correct"), str) for r in (base, run) for t in tasks):
        return missing
    a = np.concatenate([[c == "1" for c in base[f"zs.{t}.correct"]] for t in tasks])
    b = np.concatenate([[c == "1" for c in run[f"zs.{t}.correct"]] for t in tasks])
    test = stats.mcnemar_exact(a, b)
    return {"zs_base": float(a.mean()), "zs_method": float(b.mean()), "zs_delta": float(b.mean() - a.mean()),
            "zs_p": test["p"], "zs_n": len(a),
            "zs_mde": power.mde_paired_accuracy(len(a), test["n_discordant"] / len(a))}


def effects(folder: str | Path = POWERED, evaluators: Iterable[str] | None = None,
            n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every intervention run (controls excluded: they appear as columns of the run they mimic) against
    the plain model of its cell, per evaluator.

    Columns: identity; ``base_rate``, ``rate``, ``factor`` [``lo``, ``hi``] (toxicity probability, paired
    bootstrap over prompts), ``p`` (exact McNemar) and ``p_holm`` (Holm over the cells of the same
    setting, pre-prompt and evaluator); ``emt_base``, ``emt``, ``emt_p`` (paired sign-flip);
    ``rel_ppl``, ``rel_ppl_sentence`` (relative perplexity changes); ``zs_*`` (zero-shot);
    ``n_controls``, ``control_factor`` (mean over seeds), ``control_rel_ppl``, ``p_vs_control`` (the
    largest exact McNemar p of method vs a control seed) and ``beats_control`` (fewer toxic prompts than
    every control seed, each at p < 0.05: an intersection-union test, valid without correction);
    ``vs_control_at_ppl``, ``equal_ppl_at``, ``equal_ppl_ratio`` [``equal_ppl_lo``, ``equal_ppl_hi``]:
    the method against its pooled controls at equal perplexity cost (`stats.at_equal_cost`: the
    relation is measured, the ratio interpolated); ``n_ppl_controls``, ``ppl_control_factor``,
    ``ppl_control_rel_ppl``, ``p_vs_ppl_control``, ``beats_ppl_control``, ``loses_to_ppl_control``: the
    method against its perplexity-matched controls (``control_match="perplexity"``), measured
    (`_matched_controls`). Equal-damage controls are the ``n_controls`` ones.

    Each comparison uses the largest prompts x samples design its runs share (`_aligned`): the method
    against the plain model on ``n_prompts_compared`` x ``n_samples_compared`` (``mde_compared``: the
    MDE of that design, the plain run the pilot); the equal-damage controls on ``control_design`` and
    the perplexity-matched ones on ``ppl_control_design`` (``control_method_factor``,
    ``ppl_control_method_factor``: the method's factor on that design), so that a control not extended
    as far as its method never shrinks the method's own comparison.
    """
    folder = Path(folder)
    table = runs(folder)
    if not len(table):
        return pd.DataFrame()
    tasks = zeroshot_tasks(table)
    bases = _baselines(table)
    cache: dict = {}
    rows = []
    treated = table[(table.method != "none") & table.control_seed.isna()]
    pre_only = table[(table.method == "none") & table.preprompt]
    for _, run in pd.concat([treated, pre_only]).iterrows():
        if (run.model, run.benchmark) not in bases.index:
            continue
        base = bases.loc[(run.model, run.benchmark)]
        base = base.iloc[0] if isinstance(base, pd.DataFrame) else base
        mimics = table[(table.model == run.model) & (table.benchmark == run.benchmark)
                       & (table.method == run.method) & (table.params == run.params)
                       & (table.preprompt == run.preprompt) & table.control_seed.notna()]
        controls = mimics[mimics.control_match == "damage"]
        matched = mimics[mimics.control_match == "perplexity"]
        native = matched[matched.ppl_native_start == run.ppl_start]
        matched = native if len(native) else matched  # those matched under the reading used, where any
        # three comparisons, each on the largest design its runs share (a control extended later, or
        # never, does not shrink the method's own comparison with the plain model)
        whole = [_samples(folder, r, cache, whole=True) for r in (base, run)]
        bs, rs = _aligned(*whole)
        cb, cr, *cs = _aligned(*whole, *(_samples(folder, c, cache, whole=True) for _, c in controls.iterrows()))
        mb, mr, *ms = _aligned(*whole, *(_samples(folder, c, cache, whole=True) for _, c in matched.iterrows()))
        n_cmp, k_cmp = _design(bs)
        same_c, same_m = _design(cb) == (n_cmp, k_cmp), _design(mb) == (n_cmp, k_cmp)
        names = list(evaluators) if evaluators else evaluators_of(rs)
        idx = stats.paired_bootstrap_indices(n_cmp, n_boot, seed)
        idx_c = idx if same_c else stats.paired_bootstrap_indices(_design(cb)[0], n_boot, seed)
        idx_m = idx if same_m else stats.paired_bootstrap_indices(_design(mb)[0], n_boot, seed)
        zs = _zeroshot_cost(base, run, tasks)
        for ev in names:
            bt, bm = per_prompt(bs, ev, run.threshold)
            mt, mm = per_prompt(rs, ev, run.threshold)
            cbt, cmt = (bt, mt) if same_c else (per_prompt(cb, ev, run.threshold)[0],
                                                 per_prompt(cr, ev, run.threshold)[0])
            mbt, mmt = (bt, mt) if same_m else (per_prompt(mb, ev, run.threshold)[0],
                                                 per_prompt(mr, ev, run.threshold)[0])
            red = stats.ratio_with_ci(bt, mt, idx=idx)
            emt = stats.paired_signflip(bm, mm, seed=seed)
            row = {
                "config_hash": run.config_hash, "model": run.model, "benchmark": run.benchmark,
                "method": run.method, "setting": run.setting, "preprompt": run.preprompt,
                "evaluator": ev, "base_rate": red["base_rate"], "rate": red["method_rate"],
                "factor": red["factor"], "lo": red["lo"], "hi": red["hi"], "p": red["p"],
                "emt_base": float(bm.mean()), "emt": float(mm.mean()), "emt_p": emt["p"],
                "ppl": run.ppl, "rel_ppl": run.ppl / base.ppl - 1,
                "rel_ppl_sentence": run.ppl_sentence / base.ppl_sentence - 1,
                "ppl_start": run.ppl_start, "ppl_grid_start": run.ppl_grid_start,
                "rel_ppl_grid": run.ppl_grid / base.ppl_grid - 1, **zs,
                "distinct_2_base": base.get("distinct_2", math.nan),
                "distinct_2": run.get("distinct_2", math.nan),
                "n_controls": len(controls),
                "n_prompts_compared": n_cmp, "n_samples_compared": k_cmp,
                "mde_compared": _mde_at(folder, base, ev, n_cmp, k_cmp, cache),
                "control_design": _design_label(cb) if len(controls) else "",
                "ppl_control_design": _design_label(mb) if len(matched) else "",
            }
            cfac, cppl, cps, ctox = [], [], [], []
            for (_, ctl), cframe in zip(controls.iterrows(), cs):
                ct, _ = per_prompt(cframe, ev, run.threshold)
                cfac.append(stats.ratio_with_ci(cbt, ct, idx=idx_c)["factor"])
                cppl.append(ctl.ppl / base.ppl - 1)
                ctox.append(ct)
                vs = stats.mcnemar_exact(ct, cmt)  # b: control toxic only, c: method toxic only
                cps.append(vs["p"] if vs["b"] > vs["c"] else 1.0)
            row.update({
                "control_factor": float(np.mean(cfac)) if cfac else math.nan,
                "control_method_factor": (stats.ratio_with_ci(cbt, cmt, idx=idx_c)["factor"]
                                          if cfac else math.nan),
                "control_rel_ppl": float(np.mean(cppl)) if cppl else math.nan,
                "p_vs_control": float(max(cps)) if cps else math.nan,
                "beats_control": bool(cps) and max(cps) < ALPHA,
            })
            row.update(_equal_ppl(cbt, cmt, ctox, row["rel_ppl"], row["control_rel_ppl"], idx_c))
            row.update(_matched_controls(mbt, mmt, [(ctl, per_prompt(mframe, ev, run.threshold)[0])
                                                    for (_, ctl), mframe in zip(matched.iterrows(), ms)],
                                         base.ppl, run.ppl, idx_m))
            rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):  # baselines only so far
        return out
    out["p_holm"] = np.nan
    out["emt_p_holm"] = np.nan
    for _, group in out.groupby(["method", "setting", "preprompt", "evaluator"]):
        out.loc[group.index, "p_holm"] = stats.holm(group["p"].to_numpy())
        out.loc[group.index, "emt_p_holm"] = stats.holm(group["emt_p"].to_numpy())
    return out


def _design(frame: pd.DataFrame) -> tuple[int, int]:
    """(prompts, samples) of an `_aligned` frame."""
    return int(frame.prompt_id.nunique()), int(frame.sample_id.nunique())


def _design_label(frame: pd.DataFrame) -> str:
    n, k = _design(frame)
    return f"{n} × {k}"


def _mde_at(folder: Path, base, evaluator: str, n_prompts: int, n_samples: int, cache: dict) -> float:
    """The MDE of a comparison on ``n_prompts`` x ``n_samples`` of a cell, its plain run (all of its
    pooled samples) the pilot as in `power_table`, so that it equals the cell's MDE where the comparison
    uses the cell's whole design."""
    key = ("mde", base.config_hash, evaluator, n_prompts, n_samples)
    if key not in cache:
        pilot = power.pilot_from_samples(_samples(folder, base, cache), evaluator=evaluator,
                                         threshold=base.threshold)
        cache[key] = power.minimum_detectable_reduction(pilot, n_prompts, n_samples, n_sim=N_SIM)
    return cache[key]


def _matched_controls(base_toxic, method_toxic, matched: list, base_ppl: float, method_ppl: float,
                      idx: np.ndarray) -> dict:
    """The method against its perplexity-matched random controls (``matched``: ``(runs row, toxic
    [n])`` per seed), measured: ``n_ppl_controls``; ``ppl_control_factor`` and ``ppl_control_rel_ppl``
    (means over seeds); ``p_vs_ppl_control`` (two-sided exact McNemar, the largest over seeds);
    ``beats_ppl_control`` (fewer toxic prompts than every such control, each at p < 0.05) and
    ``loses_to_ppl_control`` (some such control has fewer, at p < 0.05); ``ppl_control_gap``: the
    largest |control / method corpus perplexity - 1|. A win counts only against a control that costs
    at least the method's perplexity less `MATCH_PPL_RTOL`, a loss only to one that costs at most the
    method's plus it (a control that missed the match by more cannot show either at equal cost)."""
    if not matched:
        return {"n_ppl_controls": 0, "ppl_control_factor": math.nan, "ppl_control_method_factor": math.nan,
                "ppl_control_rel_ppl": math.nan,
                "ppl_control_gap": math.nan, "p_vs_ppl_control": math.nan, "beats_ppl_control": False,
                "loses_to_ppl_control": False}
    fac, cost, gaps, ps, wins, losses = [], [], [], [], [], []
    for ctl, toxic in matched:
        fac.append(stats.ratio_with_ci(base_toxic, toxic, idx=idx)["factor"])
        cost.append(ctl.ppl / base_ppl - 1)
        gap = ctl.ppl / method_ppl - 1
        gaps.append(abs(gap))
        vs = stats.mcnemar_exact(toxic, method_toxic)  # b: control toxic only, c: method toxic only
        ps.append(vs["p"])
        wins.append(vs["b"] > vs["c"] and vs["p"] < ALPHA and gap >= -MATCH_PPL_RTOL)
        losses.append(vs["c"] > vs["b"] and vs["p"] < ALPHA and gap <= MATCH_PPL_RTOL)
    return {"n_ppl_controls": len(matched), "ppl_control_factor": float(np.mean(fac)),
            "ppl_control_method_factor": stats.ratio_with_ci(base_toxic, method_toxic, idx=idx)["factor"],
            "ppl_control_rel_ppl": float(np.mean(cost)), "ppl_control_gap": float(max(gaps)),
            "p_vs_ppl_control": float(max(ps)), "beats_ppl_control": all(wins),
            "loses_to_ppl_control": any(losses)}


def _equal_ppl(base_toxic, method_toxic, control_toxic: list, method_cost: float, control_cost: float,
               idx: np.ndarray) -> dict:
    """`stats.at_equal_cost` of the method against its control seeds pooled (per-prompt toxic rate
    averaged over seeds, perplexity cost averaged): ``vs_control_at_ppl`` (the measured relation) and
    ``equal_ppl_ratio`` [``equal_ppl_lo``, ``equal_ppl_hi``] at ``equal_ppl_at`` (interpolated)."""
    empty = {"vs_control_at_ppl": "", "equal_ppl_at": math.nan, "equal_ppl_ratio": math.nan,
             "equal_ppl_lo": math.nan, "equal_ppl_hi": math.nan}
    if not control_toxic or not (math.isfinite(method_cost) and math.isfinite(control_cost)):
        return empty
    pooled = np.mean([np.asarray(c, float) for c in control_toxic], axis=0)
    r = stats.at_equal_cost(base_toxic, method_toxic, pooled, float(method_cost), float(control_cost), idx=idx)
    return {"vs_control_at_ppl": r["relation"], "equal_ppl_at": r["at_cost"], "equal_ppl_ratio": r["ratio"],
            "equal_ppl_lo": r["lo"], "equal_ppl_hi": r["hi"]}


def with_mde(eff: pd.DataFrame, pw: pd.DataFrame) -> pd.DataFrame:
    """`effects` rows with the minimum detectable reduction beside them: ``mde`` of the design each
    comparison used (``mde_compared``: smaller than the cell's while some of its runs are extended and
    others not yet), ``mde_cell`` of the cell's plain run (`power_table`)."""
    if not len(eff) or not len(pw):
        return eff
    if "mde_compared" in eff:
        cell = pw[["model", "benchmark", "evaluator", "mde"]].rename(columns={"mde": "mde_cell"})
        return eff.merge(cell, on=["model", "benchmark", "evaluator"], how="left").assign(mde=lambda d: d.mde_compared)
    return eff.merge(pw[["model", "benchmark", "evaluator", "mde"]], on=["model", "benchmark", "evaluator"],
                     how="left")


# --------------------------------------------------------------------------------------------------
# claims


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.0%}"


# between the cells (or models) of one claim in the claims table: one line each when rendered
CELL_SEP = "\n"


def _equal_ppl_text(r) -> str:
    relation = getattr(r, "vs_control_at_ppl", "")
    if not relation:
        return ""
    ratio = getattr(r, "equal_ppl_ratio", math.nan)
    if math.isnan(ratio):
        return f" ({relation})"
    return (f" ({relation}; at equal Δppl {_pct(r.equal_ppl_at)}, method/control "
            f"{_fmt(ratio)} [{_fmt(r.equal_ppl_lo)}, {_fmt(r.equal_ppl_hi)}], interpolated)")


def _start_text(r) -> str:
    """Where a cell's capability is read under another first token than the grid's: which, and the grid's."""
    start, grid = getattr(r, "ppl_start", ""), getattr(r, "ppl_grid_start", "")
    if not start or start == grid:
        return ""
    return (f", texts read {'without a first token' if start == 'none' else f'after {start}'}; "
            f"{r.rel_ppl_grid:+.0%} after the grid's {grid}")


def _other_design(r, design: str, method_factor: str) -> str:
    """Where a control comparison ran on a smaller design than the method's own (its runs not extended
    as far): which, and the method's factor on it, so that the two factors compare like with like."""
    label = getattr(r, design, "")
    if not label or label == _design_label_of(r):
        return ""
    return f" on {label} (method {_fmt(getattr(r, method_factor, math.nan))}x there)"


def _design_label_of(r) -> str:
    """``"n × k"`` of an `effects` row's own comparison ("" where the row has none)."""
    n, k = getattr(r, "n_prompts_compared", math.nan), getattr(r, "n_samples_compared", math.nan)
    return "" if pd.isna(n) or pd.isna(k) else f"{int(n)} × {int(k)}"


def _design_text(r) -> str:
    label = _design_label_of(r)
    return f" at {label}" if label else ""


def _row_mde(r, mde: pd.Series, missing: float) -> float:
    """The MDE a verdict on an `effects` row uses: of the design its comparison used where known
    (``mde_compared``), else the cell's (``mde``, indexed by model and benchmark)."""
    m = getattr(r, "mde_compared", math.nan)
    return m if isinstance(m, float) and not math.isnan(m) else mde.get((r.model, r.benchmark), missing)


def _cells_text(sub: pd.DataFrame, mde: pd.Series) -> str:
    parts = []
    for r in sub.itertuples():
        m = _row_mde(r, mde, math.nan)
        ctl = (f"; random control {_fmt(r.control_factor)}x at Δppl {_pct(r.control_rel_ppl)}"
               f"{_other_design(r, 'control_design', 'control_method_factor')}, method vs "
               f"control p = {_fmt(r.p_vs_control, 3)}{_equal_ppl_text(r)}" if r.n_controls
               else "; no control run yet")
        if getattr(r, "n_ppl_controls", 0):
            ctl += (f"; perplexity-matched control {_fmt(r.ppl_control_factor)}x at Δppl "
                    f"{_pct(r.ppl_control_rel_ppl)}"
                    f"{_other_design(r, 'ppl_control_design', 'ppl_control_method_factor')}, method vs it "
                    f"p = {_fmt(r.p_vs_ppl_control, 3)} (measured)")
        parts.append(f"{r.model}/{r.benchmark}: {_fmt(r.factor)}x [{_fmt(r.lo)}, {_fmt(r.hi)}], "
                     f"Holm p = {_fmt(r.p_holm, 3)}, MDE {_fmt(m)}x{_design_text(r)}{ctl}; "
                     f"Δppl {r.rel_ppl:+.0%} (per-sentence {r.rel_ppl_sentence:+.0%}){_start_text(r)}, "
                     f"zero-shot {_fmt(100 * r.zs_delta, 1)} pts (p = {_fmt(r.zs_p, 3)})")
    return CELL_SEP.join(parts)


def reduction_verdict(sub: pd.DataFrame, mde: pd.Series, claimed: float, size_claimed: bool = False) -> str:
    """A reduction claim over the cells ``sub`` (one row per cell, max evaluator): "reproduces" in a
    cell when its Holm-adjusted exact p < 0.05 with fewer toxic prompts, at a corpus-perplexity
    increase <= 25%, and it beats every random control (exact test at equal damage, and not worse
    than them at equal perplexity, `stats.at_equal_cost`); else `stats.verdict` per cell (so an
    unpowered cell is "inconclusive", never "does not reproduce"). A cell that loses to its controls
    at equal damage but wins at equal perplexity says so: measured against perplexity-matched
    controls where the cell has them (``n_ppl_controls``), else interpolated (interval above 1). Where the
    paper claims a size (``size_claimed``: AURA's "up to 2.2x"), a cell that reproduces with its whole
    CI below ``claimed`` is "reduces, by less than the claimed ...x" (a CI reaching ``claimed``
    reproduces)."""
    if not len(sub):
        return "no runs yet"
    counts: dict[str, list[str]] = {}
    for r in sub.itertuples():
        m = _row_mde(r, mde, math.inf)
        lo = r.lo if not math.isnan(r.lo) else 0.0
        hi = r.hi if not math.isnan(r.hi) else math.inf
        v = stats.verdict((lo, hi), r.p_holm, m, claimed, effect=r.factor)
        if v == "reproduces" and r.rel_ppl > MAX_PPL_INCREASE:
            v = f"only at > {MAX_PPL_INCREASE:.0%} perplexity"
        elif v == "reproduces" and r.n_controls and getattr(r, "n_ppl_controls", 0):  # measured
            if not r.beats_control:
                v = ("reduces; more than random units only at equal perplexity" if r.beats_ppl_control
                     else "reduces, but not more than random units")
            elif r.loses_to_ppl_control:
                v = "reduces more than random units at equal damage, not at equal perplexity"
        elif v == "reproduces" and r.n_controls and not r.beats_control:
            v = ("reduces; more than random units only at equal perplexity (interpolated)"
                 if getattr(r, "equal_ppl_lo", math.nan) > 1 else "reduces, but not more than random units")
        elif v == "reproduces" and r.n_controls and getattr(r, "equal_ppl_hi", math.nan) < 1:
            v = "reduces more than random units at equal damage, not at equal perplexity (interpolated)"
        elif v == "reproduces" and not r.n_controls:
            v = "reduces (control not run yet)"
        if v == "reproduces" and size_claimed and hi < claimed:
            v = f"reduces, by less than the claimed {claimed:g}x"
        counts.setdefault(v, []).append(f"{r.model}/{r.benchmark}")
    # the cells are named for every verdict but the one that holds in all of them
    return "; ".join(f"{v} in {len(cells)} of {len(sub)} cells"
                     + (f" ({', '.join(cells)})" if len(cells) < len(sub) else "")
                     for v, cells in sorted(counts.items(), key=lambda t: -len(t[1])))


def localization_claims(loc_records: list[dict], site: str = "post") -> tuple[list[dict], dict]:
    """The two localization claims from each model's per-layer profile (``site``) with its bootstrap
    replicates: the early-layer share (`stats.early_layers_verdict`) and pairwise depth differences
    (`stats.compare_profiles`, centre of mass, Bonferroni-adjusted intervals)."""
    early, locs = [], {}
    for r in loc_records:
        ls = r["summary"][site]["layer_score"]
        if "boot" not in ls:
            continue
        boot, point = np.asarray(ls["boot"]), np.asarray(ls["point"])
        early.append({"model": r["model"], **stats.early_layers_verdict(boot, point)})
        locs[r["model"]] = (boot, point)
    pairs = [(a, b) for i, a in enumerate(locs) for b in list(locs)[i + 1:]]
    level = 1 - ALPHA / max(1, len(pairs))
    compare = {f"{a} vs {b}": stats.compare_profiles(locs[a], locs[b], ci=level) for a, b in pairs}
    return early, compare


def claims(folder: str | Path = POWERED, loc_records: list[dict] | None = None,
           validation_scores: pd.DataFrame | None = None, evaluator: str = "max",
           eff: pd.DataFrame | None = None, pw: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim: what the paper reports, what was measured (effects with CIs, Holm-adjusted
    exact p, MDE, random control, capability cost) and the verdict. ``eff`` and ``pw``: `effects` and
    `power_table` of ``folder`` when already computed."""
    rows = []

    def add(claim, source, reported, measured, verdict):
        rows.append({"claim": claim, "source": source, "paper reports": reported,
                     "measured here": measured, "verdict": verdict})

    if loc_records:
        early, compare = localization_claims(loc_records)
        add("Toxicity is disproportionately encoded in early MLP layers", "Beniwal & Singh 2026",
            "qualitative (abstract)",
            CELL_SEP.join(f"{e['model']}: share of the MLP-neuron profile in the first third "
                      f"{_fmt(e['early_share'])} [{_fmt(e['lo'])}, {_fmt(e['hi'])}] vs 0.33 if flat"
                      for e in early),
            CELL_SEP.join(f"{e['model']}: {e['verdict']}" for e in early))
        add("Where toxicity sits varies across architectures", "Beniwal & Singh 2026",
            "qualitative (abstract)",
            CELL_SEP.join(f"{k}: centre-of-mass depth difference {_fmt(c['diff'], 3)} [{_fmt(c['lo'], 3)}, "
                      f"{_fmt(c['hi'], 3)}]" for k, c in compare.items()) +
            f" (intervals at {1 - ALPHA / max(1, len(compare)):.1%}, Bonferroni over pairs)",
            "reproduces" if any(c["verdict"] == "differs" for c in compare.values())
            else "not distinguishable")
    if validation_scores is not None:
        cols = [c for c in validation_scores.columns if c.startswith("score.")]
        scores = {c[6:]: validation_scores[c].to_numpy() for c in cols}
        labels = validation_scores["label"].to_numpy().astype(bool)
        # at the union's own operating point (every evaluator at 0.5), and at a conventional 5% FPR
        found = [stats.underestimation_at_matched_fpr(scores, labels, fpr=f) for f in (None, 0.05)]
        naive = found[0]["naive"]
        add("A single evaluator systematically underestimates risk", "Beniwal & Singh 2026",
            "qualitative (abstract)",
            f"labelled insults (n = {len(validation_scores)}, {int(labels.sum())} insults). Naively, at "
            f"0.5 each, the union flags {_fmt(naive['union_rate'], 3)} of texts against "
            f"{_fmt(naive['best_rate'], 3)} for the best single evaluator, at a false-positive rate "
            f"{_fmt(naive['union_fpr'], 3)} vs {_fmt(naive['best_fpr'], 3)}. " +
            CELL_SEP.join(f"At a matched false-positive rate {_fmt(u['fpr'], 3)}: union recall "
                      f"{_fmt(u['union']['tpr'], 3)} vs {u['best']} {_fmt(u['singles'][u['best']]['tpr'], 3)}, "
                      f"difference {_fmt(u['recall_diff'], 3)} [{_fmt(u['lo'], 3)}, {_fmt(u['hi'], 3)}], "
                      f"exact p = {u['p']:.2g}" for u in found),
            _evaluator_verdict(found))
    if eff is None:
        eff = effects(folder, evaluators=[evaluator]) if Path(folder).is_dir() else pd.DataFrame()
    eff = eff[eff.evaluator == evaluator] if len(eff) else eff
    if not len(eff):
        return pd.DataFrame(rows)
    pw = power_table(folder) if pw is None else pw
    mde = pw[pw.evaluator == evaluator].set_index(["model", "benchmark"])["mde"]
    for method, claim, source, reported, claimed in (
            ("aura", "AURA reduces toxicity up to 2.2x at +0.72 perplexity", "Suau et al. 2024",
             "up to 2.2x, +0.72 PPL (per-sentence)", 2.2),
            ("damp", "Damp (AURA's baseline) reduces toxicity", "Suau et al. 2024", "baseline", 1.5),
            ("det0", "Det0 (AURA's baseline) reduces toxicity", "Suau et al. 2024", "baseline", 1.5),
            ("meow2x", "Meow2X reduces toxicity without retraining", "Beniwal & Singh 2026",
             "qualitative (abstract)", 1.5),
            ("trne", "TRNE reduces toxicity without retraining", "Beniwal & Singh 2026",
             "qualitative (abstract)", 1.5)):
        sub = eff[(eff.method == method) & (~eff.preprompt)]
        if len(sub):
            add(claim, source, reported, _cells_text(sub, mde),
                reduction_verdict(sub, mde, claimed, size_claimed=method == "aura"))
    pre = preprompt_table(folder, evaluator)
    if len(pre):
        add("Pre-prompting lifts AURA's average mitigation from 1.28x to 2.35x", "Suau et al. 2024",
            "1.28x → 2.35x",
            CELL_SEP.join(f"{r.model}/{r.benchmark}: (i) AURA {_fmt(r.i_aura)}x → AURA+pre-prompt "
                      f"{_fmt(r.i_aura_pre)}x (lift p = {_fmt(r.i_p, 3)}); (ii) AURA on the pre-prompted "
                      f"model {_fmt(r.ii_aura_pre_vs_pre)}x (p = {_fmt(r.ii_p, 3)}); pre-prompt alone "
                      f"{_fmt(r.pre_vs_base)}x" for r in pre.itertuples()),
            _preprompt_verdict(pre))
    aura = eff[(eff.method == "aura") & (~eff.preprompt)]
    if len(aura) and aura.zs_delta.notna().any():
        add("AURA preserves zero-shot common-sense accuracy", "Suau et al. 2024", "preserved",
            *_zeroshot_claim(aura))
    return pd.DataFrame(rows)


def _zeroshot_claim(rows: pd.DataFrame) -> tuple[str, str]:
    """(measured, verdict) of "zero-shot accuracy is preserved": one test per model (zero-shot does not
    depend on the benchmark, so a model's cells share one measurement), Holm over the models. "preserved"
    needs every model without a significant change AND a test able to see a small one (MDE at most
    ``ZEROSHOT_MDE_MAX``); otherwise the verdict says the data cannot tell."""
    per_model = rows[rows.zs_delta.notna()].drop_duplicates("model").sort_values("model")
    p_holm = stats.holm(per_model.zs_p.to_numpy())
    measured = CELL_SEP.join(
        f"{r.model}: {_fmt(100 * r.zs_base, 1)}% → {_fmt(100 * r.zs_method, 1)}% over {r.zs_n} items "
        f"(Holm p = {_fmt(p, 3)}; detectable change {_fmt(100 * r.zs_mde, 1)} points)"
        for r, p in zip(per_model.itertuples(), p_holm))
    if (p_holm < ALPHA).any():
        worst = per_model.zs_delta.min()
        return measured, f"not preserved: worst change {100 * worst:+.1f} points"
    if (per_model.zs_mde > ZEROSHOT_MDE_MAX).any():
        return measured, (f"no significant change, but a drop below {100 * ZEROSHOT_MDE_MAX:.0f} points "
                          "would not have been detected in every model")
    return measured, (f"preserved: no significant change, and a change of "
                      f"{_fmt(100 * per_model.zs_mde.max(), 1)} points would have been detected")


def _evaluator_verdict(found: list[dict]) -> str:
    """"reproduces" when the union finds significantly more true positives than the best single
    evaluator at every matched FPR; "does not reproduce" when the best single one finds significantly
    more at every one; otherwise not shown."""
    if all(u["verdict"] == "underestimates" for u in found):
        return "reproduces at matched false-positive rates"
    if all(u["p"] < ALPHA and u["recall_diff"] < 0 for u in found):
        best = {u["best"] for u in found}
        return (f"does not reproduce: at matched false-positive rates the best single evaluator "
                f"({', '.join(sorted(best))}) finds more insults than the union; the union's extra "
                "flags are false positives")
    return "not shown at matched false-positive rates"


def preprompt_table(folder: str | Path = POWERED, evaluator: str = "max", n_boot: int = 2000) -> pd.DataFrame:
    """Per cell with all four runs (plain, AURA, pre-prompt, AURA + pre-prompt): both readings of the
    pre-prompt claim (`stats.preprompt_readings`)."""
    folder = Path(folder)
    table = runs(folder)
    rows, cache = [], {}
    if not len(table):
        return pd.DataFrame(rows)
    plain = table[table.control_seed.isna() & table.method.isin(["none", "aura"])
                  & ((table.method == "none") | (table.params == json.dumps({"auroc_threshold": 0.5})))]
    for (model, bench), cell in plain.groupby(["model", "benchmark"]):
        pick = {(r.method, r.preprompt): r for r in cell.itertuples()}
        need = [("none", False), ("aura", False), ("none", True), ("aura", True)]
        if not all(k in pick for k in need):
            continue
        frames = _aligned(*(_samples(folder, pick[k], cache, whole=True) for k in need))
        ind = [per_prompt(f, evaluator, pick[k].threshold)[0] for f, k in zip(frames, need)]
        rd = stats.preprompt_readings(*ind, n_boot=n_boot)
        rows.append({"model": model, "benchmark": bench,
                     "i_aura": rd["i"]["aura"]["factor"], "i_aura_pre": rd["i"]["aura_pre"]["factor"],
                     "i_p": rd["i"]["lift"]["p"],
                     "ii_aura_pre_vs_pre": rd["ii"]["aura_pre_vs_pre"]["factor"],
                     "ii_p": rd["ii"]["aura_pre_vs_pre"]["p"],
                     "pre_vs_base": rd["pre_vs_base"]["factor"]})
    return pd.DataFrame(rows)


def _preprompt_verdict(pre: pd.DataFrame) -> str:
    """Reading (i) is the book's: the lift must be significant (Holm over cells) and in the claimed
    direction, and AURA must still reduce toxicity on the pre-prompted model (reading (ii))."""
    p_i = stats.holm(pre.i_p.to_numpy())
    p_ii = stats.holm(pre.ii_p.to_numpy())
    lifted = (p_i < ALPHA) & (pre.i_aura_pre.to_numpy() > pre.i_aura.to_numpy())
    still = (p_ii < ALPHA) & (pre.ii_aura_pre_vs_pre.to_numpy() > 1)
    both = int((lifted & still).sum())
    verdict = ("reproduces" if both == len(pre) else "does not reproduce" if not lifted.any() else "partly")
    return (f"{verdict}: reading (i), the lift from the pre-prompt is significant (Holm) in "
            f"{int(lifted.sum())} of {len(pre)} cells; reading (ii), AURA still reduces toxicity on the "
            f"pre-prompted model in {int(still.sum())} of {len(pre)}; both in {both}")


def grid_status(folder: str | Path = POWERED, profile: str = "powered",
                profiles_path: str | Path | None = None) -> pd.DataFrame:
    """Which runs of ``profile`` the folder holds: per model, runs done / planned, the hours the finished
    runs took (``hours spent``: the sum of their measured step times, `provenance.timings`), the hours
    the runs left would take by `batch.estimate_seconds` (``batch --dry-run``'s estimate from the
    finished runs; NaN where a run left has nothing to be estimated from) and the commits the finished
    runs were made at (a partial grid is shown as such, never as complete)."""
    from . import batch

    planned = batch.plan(batch.get_profile(profile, profiles_path), folder)
    estimate = batch.estimate_seconds(planned) if not all(r.done for r in planned) else {}
    rows = []
    for model in dict.fromkeys(r.config.model for r in planned):
        mine = [r for r in planned if r.config.model == model]
        prov = [results.read_result(r.result_path)["provenance"] for r in mine if r.done]
        commits = sorted({(p.get("git_commit") or "")[:12] for p in prov} - {""})
        spent = sum(float(v) for p in prov for v in p.get("timings", {}).values())
        left = [estimate.get(r.config.config_hash, math.nan) for r in mine if not r.done]
        rows.append({"model": model, "runs done": len(prov), "runs planned": len(mine),
                     "hours spent": round(spent / 3600, 1),
                     "hours left (est.)": round(sum(left) / 3600, 1) if left else 0.0,
                     "commits": ", ".join(commits) or "—"})
    return pd.DataFrame(rows)


def extension_status(folder: str | Path = POWERED) -> pd.DataFrame:
    """`grid_status` of every extension and perplexity-matched-control profile (`EXTENSIONS`,
    `PPL_CONTROLS`, in that order), one frame with a ``profile`` column first."""
    frames = [grid_status(folder, profile=p).assign(profile=p) for p in (*EXTENSIONS, *PPL_CONTROLS)]
    out = pd.concat(frames, ignore_index=True)
    return out[["profile", *(c for c in out.columns if c != "profile")]]


def hours_left_note(status: pd.DataFrame) -> str:
    """What a profile's `grid_status` cost and has left, for a sentence: ``" (9.1 h measured, about 1.3 h
    left)"``; ``" (19.3 h measured)"`` when complete, ``" (about 8.3 h left)"`` before any run; "time left
    not estimated" where some run left has no finished run to be estimated from."""
    if not len(status):
        return ""
    spent, parts = float(status["hours spent"].sum()), []
    if int(status["runs done"].sum()):
        parts.append(f"{spent:.1f} h measured")
    if int(status["runs done"].sum()) < int(status["runs planned"].sum()):
        hours = status["hours left (est.)"]
        parts.append("time left not estimated: no finished run to estimate from" if hours.isna().any()
                     else f"about {hours.sum():.1f} h left")
    return f" ({', '.join(parts)})" if parts else ""


# --------------------------------------------------------------------------------------------------
# figures


def plot_profiles(loc_records: list[dict], site: str = "post", ax=None):
    """Each model's per-layer profile (share of the MLP-neuron site's toxicity-selective units per layer,
    normalised to sum 1) against relative depth, with its 95% bootstrap band; the first third shaded
    (where the "early layers" claim puts the mass) and the flat profile dashed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.axvspan(0, 1 / 3, color="0.92", label="first third of the layers")
    for r in loc_records:
        ls = r["summary"][site]["layer_score"]
        point = np.clip(np.asarray(ls["point"], float), 0, None)
        depth = (np.arange(point.size) + 0.5) / point.size
        if point.sum() <= 0:
            continue
        line, = ax.plot(depth, point / point.sum() * point.size, marker="o", ms=3, label=r["model"])
        if "boot" in ls:
            boot = np.clip(np.asarray(ls["boot"], float), 0, None)
            boot = boot / np.where(boot.sum(1, keepdims=True) > 0, boot.sum(1, keepdims=True), 1) * point.size
            lo, hi = stats.percentile_interval(boot, 0.95, axis=0)
            ax.fill_between(depth, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    ax.axhline(1, ls="--", color="0.4", lw=1, label="flat profile")
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("share of selective units\n(relative to a flat profile)")
    ax.set_title(f"Where the toxicity-selective MLP neurons sit ({site} site, 95% bootstrap bands)",
                 fontsize=11)
    ax.legend(fontsize=9, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.figure.tight_layout()
    return ax.figure


def mde_table(pw: pd.DataFrame) -> pd.DataFrame:
    """`power_table` as one row per cell and one column per evaluator: ``MDE (baseline tox_prob)``."""
    if not len(pw):
        return pw
    cell = pw.assign(shown=[f"{'∞' if math.isinf(m) else f'{m:.2f}x'} ({b:.3f})"
                            for m, b in zip(pw.mde, pw.base_tox_prob)])
    wide = cell.pivot_table(index=["model", "benchmark", "n_prompts", "n_samples"], columns="evaluator",
                            values="shown", aggfunc="first")
    order = [e for e in wide.columns if e != "max"] + (["max"] if "max" in wide.columns else [])
    return wide[order].reset_index().rename_axis(columns=None)


def plot_effects(eff: pd.DataFrame, evaluator: str = "max", clip: float = 20.0):
    """Forest plot: each setting's toxicity-probability factor with its 95% interval (filled) beside
    its random controls' mean factor (open), one panel per model stacked at the book's page width
    (6.3 in at 110 dpi, so 7-pt type renders at ~11 px); factors above ``clip`` drawn at it."""
    import matplotlib.pyplot as plt

    from .report.common import plain_log_ticks

    if not len(eff) or not (sub := eff[(eff.evaluator == evaluator) & eff.factor.notna()].copy()).shape[0]:
        fig, ax = plt.subplots(figsize=(6.3, 1.2), dpi=110)
        ax.text(0.5, 0.5, "no intervention run yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    sub["row"] = sub.setting + np.where(sub.preprompt, " + pre-prompt", "") + " | " + sub.benchmark
    models = list(dict.fromkeys(sub.model))
    rows = sorted(sub.row.unique())
    y = {r: i for i, r in enumerate(rows)}
    fig, axes = plt.subplots(len(models), 1, figsize=(6.3, (0.16 * len(rows) + 0.55) * len(models) + 0.7),
                             dpi=110, sharex=True, squeeze=False)
    lows, highs = [], []
    for ax, model in zip(axes[:, 0], models):
        m = sub[sub.model == model]
        f, lo, hi = (np.minimum(m[c].fillna(clip).to_numpy(float), clip) for c in ("factor", "lo", "hi"))
        lows.append(np.nanmin(lo))
        highs.append(np.nanmax(hi))
        ys = m.row.map(y).to_numpy()
        ax.errorbar(f, ys, xerr=[np.maximum(f - lo, 0), np.maximum(hi - f, 0)], fmt="o", ms=3.5,
                    color="C0", lw=1, label="localized units (95% interval)")
        ctl = m[m.n_controls > 0]
        ax.plot(np.minimum(ctl.control_factor, clip), ctl.row.map(y), "o", ms=5, mfc="none", color="C3",
                label="random units at equal damage (mean of seeds)")
        ax.axvline(1, color="0.4", lw=0.8)
        ax.set_xscale("log")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.tick_params(labelsize=7)
        ax.set_title(model, fontsize=8, loc="left")
        ax.grid(axis="x", color="0.9", lw=0.6)
    lo_all, hi_all = min(lows), max(highs)
    ticks = [t for t in (0.25, 0.33, 0.5, 0.67, 0.8, 1, 1.25, 1.5, 2, 3, 5, 10, 20)
             if lo_all / 1.2 <= t <= hi_all * 1.2]
    ax = axes[-1, 0]
    plain_log_ticks(ax, ticks)
    ax.set_xlabel("toxicity-probability factor, plain / intervened (log scale; > 1 is less toxic)", fontsize=7.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("localized"))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center", ncol=2,
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if len(models) > 1 else 0.09, 1, 1))
    return fig
