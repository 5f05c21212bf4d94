"""The notebooks under papermill with tiny parameters, on the real packaged model.

`test_smoke_profile` runs the batch runner's `smoke` profile: every method through
notebooks/evaluate.ipynb, three real evaluators, result files in the one schema."""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from detox_utils import batch, results

ROOT = Path(__file__).resolve().parent.parent


def _stderr_outputs(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    return ["".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", [])
            if o.get("name") == "stderr"]

pytestmark = [pytest.mark.slow, pytest.mark.realcache]


def test_smoke_profile(tmp_path):
    out = tmp_path / "smoke"
    summaries = batch.run_batch("smoke", out, progress=False)
    failed = {s["label"]: results.read_result(out / f"{s['config_hash']}.json")["error"]
              for s in summaries if s["status"] != "ok"}
    assert not failed, f"runs failed: {failed}"
    table = results.load_results(out)
    assert set(table["config.method"]) == {"none", "aura", "det0", "damp", "meow2x", "trne"}
    for ev in ("tox-block", "alt-profanity-check", "hatesonar", "max"):
        emt = table[f"metrics.toxicity.{ev}.emt"]
        assert emt.between(0, 1).all()
    assert (table["metrics.perplexity.corpus_ppl"] > 1).all()
    record = results.read_result(next(out.glob("*.json")))
    prov = record["provenance"]
    assert {"git_commit", "packages", "model", "data", "evaluators", "seed"} <= set(prov)
    executed = sorted((out / "notebooks").glob("*.ipynb"))
    assert len(executed) == len(summaries)
    # the runner passes progress=False: no progress-bar updates (or other stderr) stored in the notebooks
    noisy = {p.name: _stderr_outputs(p)[:2] for p in executed if _stderr_outputs(p)}
    assert not noisy, noisy
    samples = results.load_samples(out, record["config_hash"])
    assert {"prompt", "continuation", "score.max"} <= set(samples.columns)
    # a rerun of a finished batch skips everything
    again = batch.run_batch("smoke", out, progress=False)
    assert {s["status"] for s in again} == {"skipped"}
    _extensions_pool_into_their_runs(out, tmp_path)


def _extensions_pool_into_their_runs(out: Path, tmp_path: Path) -> None:
    """Two more prompts for two smoke runs: the extension draws exactly what one 5-prompt run draws for
    prompts 3 and 4, and the analysis pools it into its run."""
    from detox_utils import evidence

    summaries = batch.run_batch("smoke-extend", out, progress=False)
    assert {s["status"] for s in summaries} == {"ok"}, summaries
    table = evidence.runs(out).set_index(["method", "preprompt"])
    assert table.loc[("none", False), ["n_prompts", "n_samples", "n_extensions"]].tolist() == [5, 2, 1]
    assert table.loc[("det0", False), "n_prompts"] == 5 and table.loc[("aura", False), "n_prompts"] == 3
    ext = next(s for s in summaries if "det0" not in s["label"])
    pm.execute_notebook(str(ROOT / "notebooks" / "evaluate.ipynb"), str(tmp_path / "whole.ipynb"),
                        parameters={"model": "smollm2-135m", "n_prompts": 5, "n_samples": 2,
                                    "max_new_tokens": 8, "n_contrast": 24, "n_ppl": 6, "n_boot": 50,
                                    "n_zeroshot": 0, "batch_size": 64, "ppl_corpus": "xsum",
                                    "ppl_prefix": "auto", "evaluators": ["tox-block", "alt-profanity-check",
                                                                         "hatesonar"],
                                    "result_dir": str(tmp_path / "whole"), "progress": False},
                        cwd=str(ROOT / "notebooks"), progress_bar=False)
    whole = results.load_samples(tmp_path / "whole", next((tmp_path / "whole").glob("*.json")).stem)
    part = results.load_samples(out, ext["config_hash"])
    cols = ["prompt_id", "sample_id", "continuation", "score.max"]
    assert part[cols].reset_index(drop=True).equals(whole[whole.prompt_id >= 3][cols].reset_index(drop=True))


def test_localize_notebook(tmp_path):
    out = tmp_path / "executed.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "localize.ipynb"), str(out),
                        parameters={"model": "smollm2-135m", "sites": ["post", "out"],
                                    "n_toxic": 12, "n_neutral": 12, "n_boot": 3,
                                    "result_dir": str(tmp_path / "loc"), "progress": False},
                        cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    written = list((tmp_path / "loc").glob("*.json"))
    assert len(written) == 1
    record = json.loads(written[0].read_text())
    assert set(record["summary"]) == {"post", "out"}
    assert record["summary"]["post"]["n_layers"] == 30
    nb = json.loads(out.read_text())
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 3
    assert _stderr_outputs(out) == []


def test_notebook_rejects_bad_parameter(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="'pooling' = 'median'"):
        pm.execute_notebook(str(ROOT / "notebooks" / "localize.ipynb"), str(tmp_path / "x.ipynb"),
                            parameters={"pooling": "median"}, cwd=str(ROOT / "notebooks"),
                            progress_bar=False, kernel_name="python3")
