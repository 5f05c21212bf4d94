"""The book's apparatus, checked without building it (fast): citation metadata, licence, references,
glossary, the configuration that renders them, and the book's Sphinx extension.

- `CITATION.cff` parses and carries the keys a citation needs; `LICENSE` is the MIT licence the README
  and `pyproject.toml` claim.
- Every key cited with ``{cite}`` / ``{cite:p}`` / ``{cite:t}`` in ``book/*.md`` is defined in
  `book/references.bib` (which pybtex parses), and every ``{term}`` reference names a term of the
  glossary page.
- `_config.yml` turns on sphinxcontrib-bibtex with that file, the download button and the local
  extension; `_toc.yml` has the glossary and the references page.
- `book/_ext/detox_book.py` fills the build stamp and removes duplicated scripts (the sphinx-thebe
  ``const`` declared twice was a console SyntaxError on every page).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
BIB = BOOK / "references.bib"
GLOSSARY = BOOK / "glossary.md"
EXTENSION = BOOK / "_ext" / "detox_book.py"

CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
TERM_ROLE = re.compile(r"\{term\}`([^`]+)`")


def _pages() -> list[Path]:
    return sorted(BOOK.glob("*.md"))


def _norm(term: str) -> str:
    return " ".join(term.split()).lower()


def _glossary_terms(text: str) -> set[str]:
    """Terms of every ``{glossary}`` block: its unindented non-blank lines (definitions are indented)."""
    terms: set[str] = set()
    for block in re.findall(r"```\{glossary\}[^\n]*\n(.*?)\n```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip() and not line[0].isspace() and not line.startswith(":"):
                terms.add(_norm(line))
    return terms


def _load_extension():
    spec = importlib.util.spec_from_file_location("detox_book", EXTENSION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# citation metadata and licence


def test_citation_cff_parses_with_the_required_keys():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors", "type", "license"):
        assert cff.get(key), f"CITATION.cff has no {key!r}"
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["license"] == "MIT"
    assert cff["title"] == "Where does toxicity live? — a compendium of retraining-free toxicity mitigation"
    assert cff["authors"] == [{"name": "detox-compendium contributors"}]
    for ref in cff.get("references", []):
        assert ref.get("title") and ref.get("authors") and ref.get("year"), ref


def test_licence_is_mit_as_the_readme_and_package_say():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 detox-compendium contributors" in text
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    assert "MIT" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# references and glossary


def test_references_bib_parses_and_has_unique_keys():
    from pybtex.database import parse_file

    keys = re.findall(r"^@\w+\{([^,\s]+),", BIB.read_text(encoding="utf-8"), flags=re.M)
    assert len(keys) == len(set(keys)), f"duplicate keys: {sorted(k for k in keys if keys.count(k) > 1)}"
    db = parse_file(str(BIB), bib_format="bibtex")
    assert set(db.entries) == set(keys)
    for key, entry in db.entries.items():
        assert "title" in entry.fields and "year" in entry.fields, key
        assert entry.persons.get("author"), key


def test_every_cited_key_is_in_references_bib():
    from pybtex.database import parse_file

    defined = set(parse_file(str(BIB), bib_format="bibtex").entries)
    missing = {}
    for page in _pages():
        for group in CITE_ROLE.findall(page.read_text(encoding="utf-8")):
            for key in (k.strip() for k in group.split(",")):
                if key not in defined:
                    missing.setdefault(page.name, []).append(key)
    assert not missing, f"cited but not in {BIB.name}: {missing}"


def test_the_pages_cite_the_works_they_build_on():
    cited = {key.strip() for page in _pages()
             for group in CITE_ROLE.findall(page.read_text(encoding="utf-8")) for key in group.split(",")}
    for key in ("suau2024whispering", "beniwal2026toxicity", "meng2022rome", "gehman2020realtoxicityprompts"):
        assert key in cited, f"{key} is never cited"


def test_every_term_reference_is_in_the_glossary():
    terms = _glossary_terms(GLOSSARY.read_text(encoding="utf-8"))
    assert {"emt", "toxicity probability", "union", "max over evaluators", "gini", "auroc",
            "pareto front", "mde", "exact mcnemar", "holm correction", "random-unit control",
            "acc", "acc_per_char", "corpus perplexity", "mean per-sentence perplexity",
            "document-start token", "distinct-n"} <= terms
    missing = {}
    for page in _pages():
        for ref in TERM_ROLE.findall(page.read_text(encoding="utf-8")):
            target = ref[ref.rindex("<") + 1:ref.rindex(">")] if ref.rstrip().endswith(">") else ref
            if _norm(target) not in terms:
                missing.setdefault(page.name, []).append(ref)
    assert not missing, f"{{term}} references with no glossary entry: {missing}"


def test_glossary_helper_reads_terms_not_definitions():
    text = "```{glossary}\nEMT\nExpected maximum toxicity\n  The mean of...\n  more.\n\nGini\n  Two.\n```\n"
    assert _glossary_terms(text) == {"emt", "expected maximum toxicity", "gini"}


# --------------------------------------------------------------------------------------------------
# configuration


def test_config_enables_bibtex_download_button_and_the_extension():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    sphinx = config["sphinx"]
    assert sphinx["config"]["html_theme_options"]["use_download_button"] is True
    # without a recursive update, html_theme_options would replace jupyter-book's (footer, buttons)
    assert sphinx["recursive_update"] is True
    assert sphinx["config"]["bibtex_reference_style"] == "author_year"
    assert sphinx["local_extensions"] == {"detox_book": "book/_ext"}
    assert (ROOT / sphinx["local_extensions"]["detox_book"] / "detox_book.py").is_file()
    footer = config["html"]["extra_footer"]
    assert "@BUILD_DATE@" in footer and "@BUILD_COMMIT@" in footer
    assert "detox.css" in sphinx["config"]["html_css_files"]


def test_toc_has_the_glossary_and_a_references_page_with_the_bibliography():
    from detox_utils import screenshots

    pages = screenshots.toc_pages(ROOT / "_toc.yml")
    assert "book/glossary" in pages and "book/bibliography" in pages
    assert "```{bibliography}" in (BOOK / "bibliography.md").read_text(encoding="utf-8")
    assert "```{glossary}" in GLOSSARY.read_text(encoding="utf-8")


def test_requirements_pin_jupytext_and_sphinxcontrib_bibtex():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert any(re.fullmatch(r"jupytext==\d+(\.\d+)+", line) for line in lines)
    assert any(re.fullmatch(r"sphinxcontrib-bibtex==\d+(\.\d+)+", line) for line in lines)


def test_css_keeps_tables_and_code_inside_the_column():
    css = (BOOK / "_static" / "detox.css").read_text(encoding="utf-8")
    assert re.search(r"\.bd-article pre[^{]*\{[^}]*overflow-x:\s*auto", css)
    assert re.search(r"table\.table[^{]*\{[^}]*overflow-x:\s*auto", css)


# --------------------------------------------------------------------------------------------------
# the book's Sphinx extension


def test_extension_removes_a_script_registered_twice():
    from sphinx.builders.html._assets import _JavaScript

    ext = _load_extension()
    body = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("_static/a.js"), _JavaScript(None, body=body), _JavaScript("_static/b.js"),
               _JavaScript("", body=body), _JavaScript("", body="let other = 1")]
    context = {"script_files": scripts}
    ext.dedupe_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] is scripts  # edited in place: Sphinx renders this very list
    assert [getattr(s, "attributes", {}).get("body") for s in scripts].count(body) == 1
    assert len(scripts) == 4


def test_extension_fills_the_build_stamp(monkeypatch, tmp_path):
    ext = _load_extension()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert ext.build_date() == "1970-01-01 00:00 UTC"
    assert ext.build_commit(tmp_path).startswith("unknown")  # not a git checkout

    class App:
        srcdir = str(ROOT)

    class Config:
        html_theme_options = {"extra_footer": "Built @BUILD_DATE@ from @BUILD_COMMIT@."}

    ext.fill_build_stamp(App(), Config)
    footer = Config.html_theme_options["extra_footer"]
    assert footer.startswith("Built 1970-01-01 00:00 UTC from ")
    assert "@BUILD" not in footer
    commit = ext.build_commit(ROOT)
    if not commit.startswith("unknown"):
        assert re.match(r"[0-9a-f]{12}( \+ uncommitted changes)?$", commit), commit
