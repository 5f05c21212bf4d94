"""The pre-prompt claim's rule on synthetic cells whose verdict is known."""
import pandas as pd

from detox_utils import evidence


def _cells(i_p, lifted, ii_p, still, n=3):
    return pd.DataFrame({"i_aura": [1.2] * n, "i_aura_pre": [2.0 if lifted else 1.0] * n, "i_p": [i_p] * n,
                         "ii_aura_pre_vs_pre": [1.8 if still else 0.9] * n, "ii_p": [ii_p] * n})


def test_a_clear_lift_in_every_cell_reproduces():
    text = evidence._preprompt_verdict(_cells(1e-6, True, 1e-6, True))
    assert text.startswith("reproduces:") and "in 3 of 3 cells" in text and text.endswith("both in 3")


def test_no_significant_lift_does_not_reproduce():
    text = evidence._preprompt_verdict(_cells(0.3, True, 1e-6, True))
    assert text.startswith("does not reproduce:") and "significant (Holm) in 0 of 3" in text


def test_a_significant_drop_is_not_a_lift():
    assert evidence._preprompt_verdict(_cells(1e-6, False, 1e-6, True)).startswith("does not reproduce:")


def test_lift_without_aura_still_working_is_partly():
    text = evidence._preprompt_verdict(_cells(1e-6, True, 0.5, False))
    assert text.startswith("partly:") and "pre-prompted model in 0 of 3" in text


def test_holm_adjusts_across_cells():
    # p = 0.02 in each of 3 cells: significant alone, not after Holm (0.06)
    assert evidence._preprompt_verdict(_cells(0.02, True, 1e-6, True)).startswith("does not reproduce:")
