"""The text view's sections: however a stream's text is split into chunks, its sections render
as the whole text would, and a new chunk changes only the section being written."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.components.text_sections import MAX_SECTION_CHARS, TextSections, markdown

DOCUMENT = """# A report

Some *emphasis* and `code`, then a [link](https://example.com).

- one
- two
  continued

1. first
2. second

> a quote
> over two lines

```python
def answer():
    return 42


print(answer())
```

Title written under
===

    indented code

The end.
"""


def sections_of(chunks: list[Any]) -> TextSections:
    sections = TextSections()
    for chunk in chunks:
        sections.add([chunk])
    return sections


def rendered(sections: TextSections) -> str:
    return "".join(markdown.render(section.markdown or "") for section in sections.log.items)


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *cuts})
    return [text[start:stop] for start, stop in pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(DOCUMENT)), max_size=80))
def test_sections_render_as_the_whole_text_however_it_is_chunked(cuts: list[int]) -> None:
    chunks = split_at(DOCUMENT, cuts)
    assert "".join(chunks) == DOCUMENT
    assert rendered(sections_of(chunks)) == markdown.render(DOCUMENT)


def test_a_new_chunk_changes_only_the_last_section() -> None:
    """Sections before the one being written never change, so their views never render again."""
    sections = TextSections()
    firsts: list[tuple[int, int]] = []
    original = sections.log.changed

    def changed(first: int) -> None:
        firsts.append((first, len(sections.log.items)))
        original(first)

    sections.log.changed = changed  # type: ignore[method-assign]
    settled: list[str] = []
    for chunk in split_at(DOCUMENT * 20, list(range(0, len(DOCUMENT) * 20, 3))):
        before = [section.markdown for section in sections.log.items[: sections.log.final]]
        sections.add([chunk])
        after = [section.markdown for section in sections.log.items[: len(before)]]
        assert after == before, "a settled section changed"
        settled = after
    assert len(settled) > 20 * 8  # the text really was cut into blocks
    # Each update starts at the section that was being written (or a new one).
    for (first, count), (_, count_before) in zip(firsts[1:], firsts[:-1], strict=True):
        assert first >= count_before - 1
        assert first <= count


def test_an_endless_paragraph_is_cut_so_no_section_grows_without_bound() -> None:
    words = ["word "] * 10_000
    sections = sections_of(words)
    lengths = [len(section.markdown or "") for section in sections.log.items]
    assert max(lengths) <= MAX_SECTION_CHARS + len("word ")
    assert "".join(section.markdown or "" for section in sections.log.items) == "".join(words)


def test_a_long_code_block_stays_code_in_every_section() -> None:
    lines = ["```text\n"] + [f"line {number} <b>not html</b>\n" for number in range(2_000)]
    sections = sections_of(lines)
    assert len(sections.log.items) > 5
    for section in sections.log.items:
        html = markdown.render(section.markdown or "")
        assert html.startswith('<pre><code class="language-text">'), html[:60]
        assert "<b>" not in html


def test_json_chunks_are_sections_of_their_own_between_text() -> None:
    sections = sections_of(["Before ", "the data.", {"a": 1}, [2, 3], "After."])
    items = sections.log.items
    assert [section.markdown for section in items] == ["Before the data.", None, None, "After."]
    assert [section.value for section in items[1:3]] == [{"a": 1}, [2, 3]]
    assert sections.log.final == 3  # the text after the JSON is still being written


def test_headings_sit_under_the_pages_own() -> None:
    """The run page holds the h1 and the h2 above a stream: its "#" is an h3, "######" an h6."""
    sections = sections_of(["# Top\n\n", "###### Deep\n\n", "text"])
    rendered_html = str([section.html for section in sections.log.items])
    assert "'tagName': 'h3'" in rendered_html
    assert "'tagName': 'h6'" in rendered_html
    assert "'tagName': 'h1'" not in rendered_html
