"""The Jupyter Book builds strictly and its pages are whole; helpers of the book pages and screenshots.

The slow tests read the book built once per session (`built_book` in conftest.py, tests/_book.py:
`jupyter-book build --all -W -n --keep-going`, as `python -m detox_utils book build` does, into a
temporary folder with a fresh execution cache so that every notebook page really runs) and check
that every page of `_toc.yml` was written, that the result pages (the part captioned "Results") and
the evaluator page carry figures, that no page shows an error, a traceback or stderr output, and that
the build emitted no warning. New pages are picked up from `_toc.yml` automatically.
"""
from __future__ import annotations

import gzip
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from detox_utils import data, report, screenshots
from detox_utils._io import REPO_ROOT

from _book import has_source as _has_source  # the build itself: conftest.py's `built_book`

PAGES_WITH_FIGURES_PART = "Results"
EXTRA_PAGES_WITH_FIGURES = ("book/evaluators",)
# a Sphinx/docutils warning line ("path:line: WARNING: ..." or "WARNING: ..."); the kernel's own
# "[IPKernelApp] WARNING | ..." notice is not one
SPHINX_WARNING = re.compile(r"(^|: )(WARNING|ERROR|CRITICAL): ", re.M)
VOID_TAGS = {"br", "img", "hr", "input", "meta", "link", "col", "source", "wbr"}
ERROR_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


def _toc_parts(toc: Path = REPO_ROOT / "_toc.yml") -> dict[str, list[str]]:
    """Pages of each captioned part of `_toc.yml` (its chapters, files without suffix; a ``glob:`` entry
    expanded as `screenshots.toc_pages` expands it)."""
    spec = yaml.safe_load(toc.read_text(encoding="utf-8"))
    parts: dict[str, list[str]] = {}
    globbed = {str(spec["root"]).removesuffix(".md")}  # the parts are toctrees of the root page
    for part in spec.get("parts", []):
        pages = parts.setdefault(part.get("caption", ""), [])
        for chapter in part.get("chapters", []):
            pages.extend(screenshots.entry_pages(chapter, toc.parent, globbed))
    return parts


class _Outputs(HTMLParser):
    """Collects the text inside cell outputs and the classes of every element of a built page."""

    def __init__(self):
        super().__init__()
        self.depth = 0  # >0 while inside a div.cell_output
        self.quoted = 0  # >0 while inside an element of class detox-quoted (data quoted as it is)
        self.output_text: list[str] = []
        self.classes: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = attrs.get("class") or ""
        self.classes.append(cls)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if tag in VOID_TAGS:
            return
        if self.depth:
            self.depth += 1
            if self.quoted or "detox-quoted" in cls.split():
                self.quoted += 1
        elif tag == "div" and "cell_output" in cls.split():
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth and tag not in VOID_TAGS:
            self.depth -= 1
            self.quoted = max(0, self.quoted - 1)

    def handle_data(self, data):
        if self.depth and not self.quoted:  # quoted data (a model's vocabulary, a text) is no error
            self.output_text.append(data)


def _parse(path: Path) -> _Outputs:
    parser = _Outputs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
@pytest.mark.realcache
def test_book_builds_without_warnings(built_book):
    _, log = built_book
    warnings = [line for line in log.splitlines() if SPHINX_WARNING.search(line)]
    assert not warnings, "the book build warned:\n" + "\n".join(warnings[:20])


@pytest.mark.slow
@pytest.mark.realcache
def test_every_toc_page_is_built(built_book):
    html, _ = built_book
    pages = [p for p in screenshots.toc_pages() if _has_source(p)]
    missing = [p for p in pages if not (html / f"{p}.html").is_file()]
    assert not missing, f"pages of _toc.yml with no HTML: {missing}"


@pytest.mark.slow
@pytest.mark.realcache
def test_result_pages_have_figures(built_book):
    html, _ = built_book
    pages = _toc_parts().get(PAGES_WITH_FIGURES_PART, []) + list(EXTRA_PAGES_WITH_FIGURES)
    assert pages, f"_toc.yml has no part captioned {PAGES_WITH_FIGURES_PART!r}"
    pages = [p for p in pages if _has_source(p)]
    for page in pages:
        images = [src for src in _parse(html / f"{page}.html").images if "_images/" in src]
        assert images, f"{page} shows no figure"
        for src in images:
            assert (html / page).parent.joinpath(src).resolve().is_file(), f"{page}: image {src} missing"


@pytest.mark.slow
@pytest.mark.realcache
def test_no_page_shows_an_error(built_book):
    html, _ = built_book
    for page in filter(_has_source, screenshots.toc_pages()):
        parsed = _parse(html / f"{page}.html")
        bad = [c for c in parsed.classes if {"stderr", "traceback"} & set(c.split())]
        assert not bad, f"{page} has stderr/traceback output ({bad[:3]})"
        text = " ".join(parsed.output_text)
        assert "Traceback" not in text, f"{page} shows a traceback"
        assert not ERROR_NAME.search(text), f"{page} shows an error: {ERROR_NAME.search(text).group()}"


# -- helpers behind the pages (fast) ------------------------------------------------------------------


def test_toc_pages_lists_root_then_chapters_in_order(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro",
        "parts": [{"caption": "A", "chapters": [{"file": "book/a", "sections": [{"file": "book/a1"}]},
                                                {"url": "https://example.org", "title": "x"}]},
                  {"caption": "B", "chapters": [{"file": "book/b.md"}]}],
    }))
    assert screenshots.toc_pages(toc) == ["book/intro", "book/a", "book/a1", "book/b"]
    with pytest.raises(FileNotFoundError, match="not found"):
        screenshots.toc_pages(tmp_path / "missing.yml")
    toc.write_text("chapters: []\n")
    with pytest.raises(ValueError, match="root"):
        screenshots.toc_pages(toc)


def test_toc_pages_expand_a_glob_as_sphinx_external_toc_does(tmp_path):
    for name in ("nb-b.ipynb", "nb-a.md", "nb-c.rst", "nb-d.txt", "other.md", "sub/nb-e.md", "failed-nb-f.md"):
        (tmp_path / "r" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "r" / name).write_text("# x\n")
    (tmp_path / "r" / "nb-dir.md").mkdir()  # a folder is no page
    toc = tmp_path / "_toc.yml"
    toc.write_text(yaml.safe_dump({
        "format": "jb-book", "root": "r/other",
        "parts": [{"caption": "A", "chapters": [{"file": "r/nb-b"}]},
                  {"caption": "B", "chapters": [{"glob": "r/nb-*"}, {"glob": "r/**"}]}],
    }))
    # sorted by name, one suffix-less page a source file (.md/.ipynb/.rst), '*' not across '/', '**'
    # across; a later glob of the same page's toctrees skips what an earlier one matched, and the page
    # holding them (the root), but not a page listed by 'file:' (sphinx-external-toc lists it again)
    assert screenshots.toc_pages(toc) == ["r/other", "r/nb-b", "r/nb-a", "r/nb-b", "r/nb-c",
                                          "r/failed-nb-f", "r/sub/nb-e"]
    assert _toc_parts(toc) == {"A": ["r/nb-b"],
                               "B": ["r/nb-a", "r/nb-b", "r/nb-c", "r/failed-nb-f", "r/sub/nb-e"]}
    assert screenshots.glob_pages("r/nb-*", tmp_path) == ["r/nb-a", "r/nb-b", "r/nb-c"]
    assert screenshots.glob_pages("r/none-*", tmp_path) == []


def test_the_executed_notebooks_part_lists_every_localization_notebook_titled_by_its_model():
    from detox_utils import packaged

    pages = _toc_parts()["Executed notebooks"]
    assert pages == [f"results/localization/localize-{m}" for m in packaged.available()]
    for page, model in zip(pages, packaged.available()):
        nb = json.loads((REPO_ROOT / f"{page}.ipynb").read_text(encoding="utf-8"))
        first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
        assert "".join(first["source"]).startswith(f"# Localization notebook: {model}\n")


def test_notebook_links_name_each_executed_notebook_by_its_absolute_document_name(tmp_path):
    folder = tmp_path / "results" / "localization"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="python -m detox_utils localize"):
        report.notebook_links(folder, tmp_path)
    for name in ("localize-b.ipynb", "localize-a.ipynb", "failed-localize-c.ipynb", "a__auroc-max.json"):
        (folder / name).write_text("{}")
    assert report.notebook_links(folder, tmp_path) == (
        "{doc}`/results/localization/localize-a` and {doc}`/results/localization/localize-b`")
    assert report.notebook_links() == " and ".join([", ".join(
        f"{{doc}}`/{p}`" for p in _toc_parts()["Executed notebooks"][:-1]),
        f"{{doc}}`/{_toc_parts()['Executed notebooks'][-1]}`"])  # the pages the toc's glob lists


def test_every_page_of_the_real_toc_has_a_source():
    missing = [page for page in screenshots.toc_pages() if not _has_source(page)]
    assert not missing, f"pages listed in _toc.yml with no .md/.ipynb source: {missing}"


def test_screenshots_skip_cleanly_without_chromium(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(screenshots, "find_chromium", lambda: None)
    with caplog.at_level("WARNING"):
        assert screenshots.shoot_all(tmp_path / "shots") == []
    assert "apt-get install -y chromium" in caplog.text
    assert not (tmp_path / "shots").exists()
    with pytest.raises(FileNotFoundError, match="chromium"):
        screenshots.screenshot("book/intro", tmp_path / "x.png", html_dir=tmp_path, chromium=None)


def test_screenshot_rejects_bad_sizes_and_missing_pages(tmp_path):
    with pytest.raises(ValueError, match="height"):
        screenshots.screenshot("book/intro", tmp_path / "x.png", html_dir=tmp_path, height=10)
    with pytest.raises(FileNotFoundError, match="build the book"):
        screenshots.page_file("book/nope", tmp_path)


def test_tiles_cut_blank_space_and_split(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (400, 5000), "white")
    image.paste((0, 0, 0), (0, 0, 20, 5000))  # the sidebar border: ignored
    image.paste((30, 30, 30), (200, 100, 300, 2500))  # content down to row 2500
    image.paste((30, 30, 30), (200, 4900, 300, 4950))  # footer pinned far below: cut off
    shot = tmp_path / "page.png"
    image.save(shot)
    tiles = screenshots.tile(shot, height=1000)
    assert [t.name for t in tiles] == ["page.png", "page.2.png", "page.3.png"]
    heights = [Image.open(t).height for t in tiles]
    assert heights == [1000, 1000, 2500 + screenshots.MARGIN - 2000]


def _tiny_gguf(path: Path) -> None:
    """A small GGUF written by the reference writer of the `gguf` package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"] * 50)
    writer.add_array("tokenizer.ggml.scores", [0.5] * 150)
    writer.add_tensor("token_embd.weight", np.zeros((150, 8), dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((16, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("cuts", [(), (5,), (3, 40, 700)])
def test_gguf_header_reads_metadata_and_shapes_across_chunks(tmp_path, cuts):
    whole = tmp_path / "tiny.gguf"
    _tiny_gguf(whole)
    raw = whole.read_bytes()
    bounds = [0, *cuts, len(raw)]
    chunks = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        chunks.append(tmp_path / f"part{i}")
        chunks[-1].write_bytes(raw[a:b])
    header = report.gguf_header(chunks)
    assert header["metadata"]["general.name"] == "tiny"
    assert header["metadata"]["llama.block_count"] == 2
    assert header["metadata"]["tokenizer.ggml.tokens"] == "[150 items]"
    # GGUF stores dims fastest-varying first: numpy (150, 8) is (8, 150)
    assert header["tensors"] == [("token_embd.weight", (8, 150), "F32"),
                                 ("blk.0.ffn_up.weight", (8, 16), "F16")]


def test_gguf_header_rejects_other_files(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(gzip.compress(b"not a gguf"))
    with pytest.raises(ValueError, match="not a GGUF"):
        report.gguf_header([path])
    path.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="truncated"):
        report.gguf_header([path])


@pytest.mark.slow
def test_model_cards_match_the_reference_gguf_reader():
    """Shapes and types from our header reader equal those of `gguf.GGUFReader` (which maps the whole
    file) on the packaged SmolLM2 GGUF; the cards' parameter count is their sum."""
    import gguf

    files, _, _ = report.packaged_gguf("smollm2-135m")
    ours = report.gguf_header(files)["tensors"]
    reference = gguf.GGUFReader(files[0])
    assert ours == [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reference.tensors]
    cards = report.model_cards()
    n_params = sum(math.prod(shape) for _, shape, _ in ours)
    assert cards.loc["parameters (from the GGUF tensor table)", "smollm2-135m"] == f"{n_params / 1e6:.1f} M"
    assert set(cards.columns) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"}
    assert "Gemma Terms of Use" in cards.loc["licence", "gemma3-270m"]


def test_role_overlap_is_zero_and_covers_every_pair():
    overlap = report.role_overlap()
    assert len(overlap) == math.comb(len(data.ROLES), 2)
    assert (overlap["shared texts"] == 0).all()
    assert (overlap[["texts in A", "texts in B"]] > 0).all().all()


def test_evaluator_tables_follow_the_validation_record():
    validation = {
        "threshold": 0.5, "n_boot": 10, "data": {"rows": 10, "positives": 4},
        "evaluators": {
            name: {"auroc": auc, "auroc_lo": auc - 0.1, "auroc_hi": auc + 0.05, "average_precision": 0.5,
                   "positive_rate": 0.5, "precision": 0.6, "recall": 0.75, "f1": 0.67,
                   "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]},
                   "provenance": {"package": name, "version": "1", "licence": "MIT", "p_toxic": "p",
                                  "max_tokens": None}}
            for name, auc in (("hatesonar", 0.7), ("tox-block", 0.9))
        },
    }
    table = report.evaluator_validation_table(validation)
    assert table["evaluator"].tolist() == ["tox-block", "hatesonar"]  # best AUROC first
    # 5 flagged, 3 of them insults: 2 of the 6 non-insults flagged
    assert table["false positive rate"].tolist() == ["0.333", "0.333"]
    cards = report.evaluator_cards(validation)
    assert "detoxify" in cards["evaluator"].tolist()  # known but not validated: says what it needs
    fig = report.plot_evaluator_validation(validation)
    assert len(fig.axes) == 2 and all(ax.get_xlabel() for ax in fig.axes)


def test_page_checks_see_errors_inside_cell_outputs_only(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(
        "<p>Prose may name a ValueError.</p>"
        "<div class='cell docutils container'><div class='cell_output docutils container'>"
        "<div class='output stderr'><pre>UserWarning: careful<br>KeyError: 'x'</pre></div>"
        "<img src='../_images/fig.png'></div></div><p>after</p>",
        encoding="utf-8")
    parsed = _parse(page)
    assert "output stderr" in parsed.classes
    assert ERROR_NAME.search(" ".join(parsed.output_text)).group() == "KeyError"
    assert "ValueError" not in " ".join(parsed.output_text)
    assert parsed.images == ["../_images/fig.png"]
    assert SPHINX_WARNING.search("/x/book/a.md:3: WARNING: unknown document: 'b'")
    assert not SPHINX_WARNING.search("[IPKernelApp] WARNING | Kernel is running over TCP")


def test_retitle_gives_an_executed_notebook_its_own_heading(tmp_path):
    import json

    nb = {"cells": [{"cell_type": "code", "source": "# not a heading\nx = 1", "metadata": {}, "outputs": [],
                     "execution_count": None},
                    {"cell_type": "markdown", "source": ["# Template title\n", "\n", "text"], "metadata": {}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    report.retitle_notebook(path, "Localization notebook: m")
    cells = json.loads(path.read_text())["cells"]
    assert cells[1]["source"] == "# Localization notebook: m\n\ntext"
    assert cells[0]["source"] == nb["cells"][0]["source"]  # code comments are not headings
    with pytest.raises(ValueError, match="one non-empty line"):
        report.retitle_notebook(path, "a\nb")
    path.write_text(json.dumps({**nb, "cells": nb["cells"][:1]}))
    with pytest.raises(ValueError, match="no markdown cell"):
        report.retitle_notebook(path, "t")
    with pytest.raises(FileNotFoundError):
        report.retitle_notebook(tmp_path / "missing.ipynb", "t")


def test_retitle_drops_progress_bars_but_keeps_other_stderr(tmp_path):
    bar = {"output_type": "stream", "name": "stderr",
           "text": ["Converting...:   0%|          | 0/272 [00:00<?, ?it/s]\r",
                    "Converting...: 100%|██████████| 272/272 [00:03<00:00, 87.86it/s] \n", "\n"]}
    warning = {"output_type": "stream", "name": "stderr", "text": ["UserWarning: something real\n"]}
    out = {"output_type": "stream", "name": "stdout", "text": ["42\n"]}
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Old"},
                    {"cell_type": "code", "metadata": {}, "source": "x", "outputs": [bar, warning, out],
                     "execution_count": 1}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    report.retitle_notebook(path, "New")
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["source"] == "# New" and cells[1]["outputs"] == [warning, out]


def test_page_checks_skip_quoted_data_but_not_what_follows(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<div class="cell_output"><table class="detox-quoted"><colgroup><col></colgroup>'
                    '<tr><td>OutOfRangeException</td></tr></table><p>after</p></div>', encoding="utf-8")
    parsed = _parse(page)
    assert "OutOfRangeException" not in " ".join(parsed.output_text)
    assert "after" in " ".join(parsed.output_text)
