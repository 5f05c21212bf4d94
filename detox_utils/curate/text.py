"""Text cleaning for the curation, as pure functions (tested in tests/test_data.py): the key used for
deduplication and the disjointness of roles (`normalise`, `role_keys`), the Kaggle insults comments
(`clean_comment`), the prompt / continuation split (`prompt_half`) and an XSum article's lead
(`xsum_lead`)."""
from __future__ import annotations

import html
import math
import re
import unicodedata
from typing import Any

XSUM_MIN_LEAD_WORDS = 5
XSUM_BOILERPLATE = re.compile(r"^media playback is (not supported on this|unsupported on your) device\.?$", re.I)
# Text-like columns compared across roles (a text may hide in `full_text` or `document`).
TEXT_COLUMNS: tuple[str, ...] = ("text", "full_text", "document")

_WS = re.compile(r"\s+")
_ESCAPE = re.compile(r"\\+(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt'\"])")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\n", "t": "\t", "'": "'", '"': '"'}


def normalise(text: str) -> str:
    """The key used for deduplication and the disjointness of roles: lowercase, whitespace collapsed."""
    return _WS.sub(" ", text).strip().lower()


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace (newlines and no-break spaces included) becomes one space; stripped."""
    return _WS.sub(" ", text).strip()


def _decode_bytes(buf: bytes) -> str:
    """Bytes from ``\\xNN`` escapes: UTF-8 sequences where they are valid, Latin-1 byte by byte elsewhere."""
    out: list[str] = []
    i = 0
    while i < len(buf):
        for width in (4, 3, 2, 1):
            try:
                char = buf[i : i + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(char) == 1:
                out.append(char)
                i += width
                break
        else:
            out.append(buf[i : i + 1].decode("latin-1"))
            i += 1
    return "".join(out)


def decode_escapes(text: str) -> str:
    """Decode the escape sequences the Kaggle insults CSVs carry literally in their text.

    Runs of backslashes count as one (the files escape some escapes twice). Consecutive ``\\xNN``
    bytes are decoded together, as UTF-8 where valid (``\\xe2\\x80\\x99`` -> ``’``) and Latin-1 where
    not (``\\xa0`` -> no-break space); ``\\uXXXX`` (surrogate pairs included) -> the character;
    ``\\n``, ``\\r``, ``\\t`` -> whitespace; ``\\'``, ``\\"`` -> the quote. Other backslashes stay.
    """
    out: list[str] = []
    pending = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        if match.start() != pos and pending:
            out.append(_decode_bytes(bytes(pending)))
            pending.clear()
        out.append(text[pos : match.start()])
        code = match.group(1)
        if code[0] == "x":
            pending.append(int(code[1:], 16))
        else:
            if pending:
                out.append(_decode_bytes(bytes(pending)))
                pending.clear()
            out.append(chr(int(code[1:], 16)) if code[0] in "uU" else _SIMPLE_ESCAPES[code])
        pos = match.end()
    if pending:
        out.append(_decode_bytes(bytes(pending)))
    out.append(text[pos:])
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")


def clean_comment(raw: str) -> str:
    """One Kaggle insults ``Comment`` field as plain text (see `decode_escapes` and the module doc)."""
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    text = decode_escapes(text)
    text = _HTML_TAG.sub(" ", html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return collapse_whitespace(text)


def prompt_half(text: str) -> tuple[str, str]:
    """Split a text into its first half of words (rounded up) and the rest: (prompt, continuation)."""
    words = text.split()
    k = math.ceil(len(words) / 2)
    return " ".join(words[:k]), " ".join(words[k:])


def xsum_lead(document: str, min_words: int = XSUM_MIN_LEAD_WORDS) -> str:
    """An XSum article's lead: its first paragraph (line) with at least ``min_words`` words that is not
    the BBC's "Media playback is not supported on this device" notice, or ''."""
    for line in document.split("\n"):
        line = collapse_whitespace(line)
        if len(line.split()) >= min_words and not XSUM_BOILERPLATE.match(line):
            return line
    return ""


def role_keys(rows: list[dict[str, Any]]) -> set[str]:
    """The normalised texts of a data set, over every text-like column."""
    return {normalise(row[c]) for row in rows for c in TEXT_COLUMNS if row.get(c)}
