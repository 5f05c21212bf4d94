"""Does a capability cost depend on the token the perplexity texts are read after?

The grid measures perplexity with each model's document-start token (`metrics.document_start_id`: the
BOS unless it opens a chat turn, else ``<|endoftext|>``, else a non-chat EOS; the convention of
lm-evaluation-harness). That rule gives ``<bos>`` for Gemma and ``<|endoftext|>`` for SmolLM2 and
Qwen2.5-Coder-Instruct. After ``<|endoftext|>`` the coder-instruct model predicts English text far
worse than after nothing at all, so its perplexities are inflated. Two measurements say what that does:

- `start_candidates`: a plain model's NLL on held-out text (news leads, not the grid's wiki corpus)
  after each candidate first token, on the same scored tokens (every token of a text but its first, which
  has no context without a prefix), so the candidates are compared fairly;
- `remeasure`: every edit behind a result folder's runs, measured again under another prefix, so the
  relative perplexity changes the verdicts use can be compared under both.

Records: ``<folder>/ppl-prefix/<model>.json`` (kind ``ppl-prefix``), written atomically after every edit,
so an interrupted `remeasure` resumes. `evidence.ppl_prefix_table` reads them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import results
from ._io import atomic_write_json, check_texts, stable_hash
from ._progress import tqdm
from .config import PPL_PREFIXES

log = logging.getLogger(__name__)

KIND = "ppl-prefix"
FOLDER = "ppl-prefix"
SCHEMA = 1
HELD_OUT = "xsum"
"""The held-out corpus `start_candidates` compares first tokens on (news leads; the grid uses wiki)."""


def candidates(tokenizer) -> dict[str, int | None]:
    """The first tokens a perplexity text could be read after, by name: ``none`` (no prefix), the BOS and
    EOS tokens and ``<|endoftext|>`` where the vocabulary has them (chat-turn tokens included: the
    table shows what they cost), each once; ``doc-start`` names the one `metrics.document_start_id`
    picks."""
    from . import metrics

    out: dict[str, int | None] = {"none": None}
    vocab = tokenizer.get_vocab()
    for token in (tokenizer.bos_token, metrics.ENDOFTEXT, tokenizer.eos_token):
        if token is not None and token in vocab and vocab[token] not in out.values():
            out[token] = vocab[token]
    return out


def tail_nll(model, ids: list[list[int]], n_skip: Sequence[int], pad_id: int,
             batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and count of the tokens of each sequence after its first ``n_skip[i] + 1`` positions.

    ``ids``: b token lists (a prefix, if any, then the text); ``n_skip``: how many positions after the
    first are context only (1 for a prefixed text, so its first text token is not scored; 0 without a
    prefix) -> (nll [b], n_scored [b]). Right-padded batches; padding is never scored.
    """
    from . import metrics

    nll, count = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # batches of similar length: little padding
    for start in range(0, len(ids), batch_size):
        batch = order[start:start + batch_size]
        nll[batch], count[batch] = metrics.sequence_nll(model, [ids[i] for i in batch], pad_id,
                                                        n_skip=[n_skip[i] for i in batch])
    return nll, count


def start_candidates(lm, texts: Sequence[str], max_length: int = 256,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Perplexity of the plain model ``lm`` on ``texts`` after each of `candidates`, on the same tokens.

    Every text is scored from its second token on, whatever precedes it, so a prefix is not credited
    (or charged) for the first token. Returns one row per candidate: ``start`` (its name), ``token_id``,
    ``doc_start`` (the grid's choice), ``ppl`` (corpus, over the common tokens), ``n_tokens``.
    """
    from . import metrics

    texts = check_texts(texts)
    tok = lm.tokenizer
    body = [row for row in tok(list(texts), add_special_tokens=False)["input_ids"]]
    if any(len(row) < 2 for row in body):
        raise ValueError("every text needs at least two tokens (the first is context only)")
    chosen = metrics.document_start_id(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = []
    for name, token_id in tqdm(candidates(tok).items(), desc="first tokens", disable=not progress):
        ids = [([token_id] if token_id is not None else []) + row[:max_length - 1] for row in body]
        skip = [1 if token_id is not None else 0] * len(ids)
        nll, n = tail_nll(lm.model, ids, skip, pad_id)
        rows.append({"start": name, "token_id": token_id, "doc_start": token_id == chosen,
                     "ppl": float(math.exp(nll.sum() / n.sum())), "n_tokens": int(n.sum())})
    return rows


def edits(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The distinct edits behind grid runs (extensions left out: they share their run's edit), keyed by
    a hash of what makes the weights: method and parameters, control seed, matching and, for a
    perplexity-matched control, the strength its calibration found. Each value holds the fields that
    rebuild the edit (``config``, ``control``) and the runs that measured it (``runs``: hash -> their
    corpus perplexity)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        cfg = rec["config"]
        if cfg.get("prompt_start", 0) or cfg.get("sample_start", 0) or rec.get("status") != "ok":
            continue
        control = (rec["provenance"].get("method") or {}).get("control")
        strength = control.get("strength") if cfg.get("control_match") == "perplexity" and control else None
        key = stable_hash({"model": cfg["model"], "method": cfg["method"],
                           "params": dict(cfg.get("method_params") or {}), "seed": cfg.get("control_seed"),
                           "match": cfg.get("control_match", "damage"), "strength": strength,
                           "fit": [cfg.get("n_contrast"), cfg.get("seed")]})
        entry = out.setdefault(key, {"config": cfg, "control": control, "runs": {}})
        entry["runs"][rec["config_hash"]] = rec["metrics"]["perplexity"]["corpus_ppl"]
    return out


def rebuild(entry: Mapping[str, Any], lm, folder: str | Path):
    """The edit of an `edits` entry: the method's fit (the folder's published one when there is one,
    else the machine's cache or a refit) and, for a control, its seed and, when matched to perplexity,
    the strength its run recorded (no recalibration)."""
    from . import experiment, interventions
    from .config import EvalConfig

    cfg = EvalConfig.from_params({k: v for k, v in entry["config"].items() if k != "config_hash"})
    fitted = experiment.fit_method(dataclasses.replace(cfg, control_seed=None, control_match="damage"), lm,
                                   progress=False, result_dir=folder, publish=False)
    if cfg.control_seed is None:
        return fitted
    if cfg.control_match == "perplexity":
        return interventions.matched_from(fitted, cfg.control_seed, entry["control"])
    return interventions.random_control(fitted, cfg.control_seed)


def record_path(folder: str | Path, model: str) -> Path:
    return Path(folder) / FOLDER / f"{model.replace('/', '--')}.json"


def read(folder: str | Path, model: str) -> dict[str, Any] | None:
    """The ``ppl-prefix`` record of ``model`` in ``folder`` (`results.read_record`), or None when there is
    none; ValueError for a damaged record or one of another kind or schema."""
    path = record_path(folder, model)
    if not path.is_file():
        return None
    record = results.read_record(path, KIND)
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path} has schema {record.get('schema')!r}, this code reads {SCHEMA}; delete it and "
                         "rerun `python -m detox_utils ppl-prefix` to recreate it")
    return record


def _grid_prefix(edits_: Mapping[str, Mapping], model: str) -> tuple[str, str, int]:
    """The perplexity settings the model's runs share (corpus, prefix, n): a remeasurement must match."""
    seen = {(e["config"].get("ppl_corpus"), e["config"].get("ppl_prefix", "auto"), e["config"].get("n_ppl"))
            for e in edits_.values()}
    if len(seen) != 1:
        raise ValueError(f"the runs of {model} measure perplexity in {len(seen)} ways {sorted(seen)}; "
                         "remeasure one grid at a time (one result folder per grid)")
    return next(iter(seen))


def remeasure(folder: str | Path, model: str, prefix: str = "none", remeasure_grid: Iterable[str] = ("aura",),
              progress: bool = True, candidates_only: bool = False,
              methods: Iterable[str] | None = None) -> Path:
    """Measure every edit of ``model``'s runs in ``folder`` under ``prefix`` (and, for the methods in
    ``remeasure_grid``, whose fits a machine may redo slightly differently, under the grid's own prefix
    too, so that the pair is of one edit); write ``<folder>/ppl-prefix/<model>.json`` after each edit.
    Edits already in the record (same key, same prefix) are skipped, and so are runs measured under
    another prefix than the plain model's (e.g. controls matched under ``prefix`` itself: their own
    reading is the one wanted). Returns the record's path.

    The plain model comes first (every relative change is against it). Also records `start_candidates`
    of the plain model on `HELD_OUT` (100 leads); ``candidates_only`` records just those (for a model whose
    grid prefix they show to be the best start, the edits need no second measurement). ``methods``: only
    the edits of these methods (and the plain model), e.g. ``["aura"]`` to see which AURA runs the
    folder's AURA fit reproduces (``run_gap`` in `evidence.ppl_prefix_table`)."""
    from . import data, metrics, models

    if prefix not in PPL_PREFIXES:
        raise ValueError(f"prefix {prefix!r} is not allowed; allowed: {', '.join(PPL_PREFIXES)}")
    every = edits(_all(folder))
    mine = {k: e for k, e in every.items() if e["config"]["model"] == model}
    if not mine:
        raise ValueError(f"no finished run of model {model!r} in {folder}; models there: "
                         f"{sorted({e['config']['model'] for e in every.values()})}")
    # the grid's prefix is its plain model's: only runs measured under it are measured again (a control
    # matched under another prefix, e.g. ``prefix`` itself, has its own reading)
    plain = {e["config"].get("ppl_prefix", "auto") for e in mine.values()
             if e["config"]["method"] == "none" and e["config"].get("control_seed") is None}
    by_key = ({k: e for k, e in mine.items() if e["config"].get("ppl_prefix", "auto") in plain}
              if len(plain) == 1 else mine)
    if prefix in plain:
        raise ValueError(f"prefix {prefix!r} is the one the runs of {model} were measured with; give another "
                         f"({', '.join(p for p in PPL_PREFIXES if p != prefix)})")
    corpus, grid_prefix, n_ppl = _grid_prefix(by_key, model)
    texts = data.perplexity_texts(corpus, n=n_ppl)
    path = record_path(folder, model)
    record = read(folder, model) or {"schema": SCHEMA, "kind": KIND, "model": model, "corpus": corpus,
                                     "n_ppl": n_ppl, "grid_prefix": grid_prefix, "edits": {}}
    if (record["corpus"], record["n_ppl"], record["grid_prefix"]) != (corpus, n_ppl, grid_prefix):
        raise ValueError(f"{path} was measured on another corpus or prefix; delete it to remeasure")
    other = sorted(set(record.get("prefixes", {})) - {grid_prefix, prefix})
    if other:
        raise ValueError(f"{path} holds measurements under prefix {other[0]!r}, not {prefix!r}; measure under "
                         f"{other[0]!r} again, or delete it to measure under {prefix!r}")
    if methods is not None:
        known = sorted({e["config"]["method"] for e in by_key.values()})
        unknown = sorted(set(methods) - set(known))
        if unknown:
            raise ValueError(f"methods {unknown} have no run of {model} in {folder}; methods there: {known}")
    path.parent.mkdir(parents=True, exist_ok=True)
    lm = models.load(model)
    tok = lm.tokenizer
    record["prefixes"] = {p: _token_name(tok, p) for p in (grid_prefix, prefix)}
    if "start_candidates" not in record:
        record["start_candidates"] = {"corpus": HELD_OUT, "n_texts": 100, "rows": start_candidates(
            lm, data.perplexity_texts(HELD_OUT, n=100), progress=progress)}
        atomic_write_json(path, {**record, "provenance": results.provenance()})
    chosen = [k for k in by_key if methods is None or by_key[k]["config"]["method"] in {"none", *methods}]
    order = [] if candidates_only else sorted(chosen, key=lambda k: (_rank(by_key[k]["config"]), k))
    for key in tqdm(order, desc=f"edits of {model}", disable=not progress):
        entry, done = by_key[key], record["edits"].get(key, {})
        want = [prefix] + ([grid_prefix] if entry["config"]["method"] in remeasure_grid else [])
        if all(p in done.get("ppl", {}) for p in want):
            done["runs"] = entry["runs"]  # runs finished since (e.g. the other benchmark's) share the edit
            continue
        edit = rebuild(entry, lm, folder)
        ppl = dict(done.get("ppl", {}))
        with edit.apply(lm, fold=True):
            for p in want:
                if p not in ppl:
                    ppl[p] = metrics.perplexity(lm, texts, prefix=p, progress=False)
        cfg = entry["config"]
        record["edits"][key] = {
            "method": cfg["method"], "method_params": dict(cfg.get("method_params") or {}),
            "control_seed": cfg.get("control_seed"), "control_match": cfg.get("control_match", "damage"),
            "strength": (entry["control"] or {}).get("strength") if cfg.get("control_match") == "perplexity"
            else None, "runs": entry["runs"], "ppl": ppl}
        record["provenance"] = results.provenance()
        atomic_write_json(path, record)
        log.info("%s %s: %s", model, key, {p: round(v["corpus_ppl"], 3) for p, v in ppl.items()})
    atomic_write_json(path, record)
    return path


def _rank(cfg: Mapping[str, Any]) -> int:
    """The order edits are measured in, so a partial record answers the verdicts first: the plain model,
    the methods, their perplexity-matched controls, then the controls at equal damage."""
    if cfg["method"] == "none":
        return 0
    if cfg.get("control_seed") is None:
        return 1
    return 2 if cfg.get("control_match") == "perplexity" else 3


def _all(folder: str | Path) -> list[dict[str, Any]]:
    """Every finished grid run of ``folder`` that is not an extension."""
    runs, _ = results.runs_and_extensions(folder)
    return [r for group in runs.values() for r in group]


def _token_name(tokenizer, prefix: str) -> str | None:
    """The special token a text is read after under a prefix setting (None: none, the text comes first)."""
    from . import metrics

    first = metrics.encode_for_perplexity(tokenizer, ["a b"], 8, prefix=prefix)[0][0]
    return tokenizer.convert_ids_to_tokens(first) if first in tokenizer.all_special_ids else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detox_utils ppl-prefix --model M [--out results/powered] [--prefix none]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m detox_utils ppl-prefix", description=(
        "Measure every edit of a model's runs in a result folder again under another perplexity prefix "
        "(resumable), and compare first tokens on held-out text; writes <out>/ppl-prefix/<model>.json"))
    parser.add_argument("--model", required=True, help="a model of the folder's runs")
    parser.add_argument("--out", default="results/powered", help="the result folder (default results/powered)")
    parser.add_argument("--prefix", default="none", choices=PPL_PREFIXES,
                        help="the prefix to measure under (default none: no first token)")
    parser.add_argument("--candidates-only", action="store_true",
                        help="only compare the plain model's first tokens on held-out text")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="only the edits of these methods (and the plain model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: no such folder (give a result folder with grid runs)")
    try:
        print(remeasure(args.out, args.model, prefix=args.prefix, candidates_only=args.candidates_only,
                        methods=args.methods))
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


__all__ = ["HELD_OUT", "KIND", "candidates", "edits", "read", "rebuild", "record_path", "remeasure",
           "start_candidates", "tail_nll"]
