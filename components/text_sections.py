"""A stream's text view, cut into sections as it grows, so that a new chunk renders only the
section it lands in.

String chunks are Markdown text, written a few characters at a time (an LLM's tokens). Rendering
all of the text again for each chunk would cost the page the whole text per chunk; so the text is
cut where Markdown's blocks begin (paragraphs, headings, lists, code blocks): every block before
the last one is settled, since text that comes later can only extend the last block, and is
rendered once. Only the last section, the one being written, renders again.

A last block that grows past :data:`MAX_SECTION_CHARS` without ending (one endless paragraph, a
long code block) is cut at a line break (in one endless line, at a space), so that no section
costs more than that per update; a code block cut so carries its opening fence on into the next
section, and stays code.

Any other chunk (a JSON value) is a section of its own: the JSON, pretty-printed.

What this leaves out of CommonMark: a link reference definition applies only within its section.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from reactpy.core.types import VdomDict
from reactpy.utils import html_to_vdom

from .growing import ItemLog

# html=False: text from a stream is shown, never interpreted as HTML.
markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})

# A stream's headings sit under its page's: the run is the page's h1 and "Streams" an h2, so a
# Markdown "# Title" is an h3 (and "####" and below are all h6), which keeps the page's outline
# in order for screen readers.
HEADING_SHIFT = 2
# The longest the section being written grows before it is cut at a line break.
MAX_SECTION_CHARS = 4096


@dataclass
class TextSection:
    """Markdown text (``markdown``), or one JSON chunk (``value``)."""

    markdown: str | None = None
    value: Any = None

    @cached_property
    def html(self) -> VdomDict:
        """The section rendered, once: only the section being written is ever rendered again,
        as a new section object."""
        tokens = markdown.parse(self.markdown or "")
        for token in tokens:
            if token.type in ("heading_open", "heading_close"):
                token.tag = f"h{min(int(token.tag[1]) + HEADING_SHIFT, 6)}"
        rendered = markdown.renderer.render(tokens, markdown.options, {})
        return html_to_vdom(f"<div class='md-section'>{rendered}</div>")


class TextSections:
    """The sections of a stream's chunks, kept as the chunks arrive (:meth:`add`)."""

    def __init__(self) -> None:
        self.log: ItemLog[TextSection] = ItemLog()
        self._open: str | None = None  # the Markdown of the last section, while it is written

    def add(self, chunks: list[Any]) -> None:
        """Take in new chunks, and tell the log's viewers which sections changed."""
        if not chunks:
            return
        sections = self.log.items
        first_changed = len(sections) - 1 if self._open is not None else len(sections)
        for chunk in chunks:
            if isinstance(chunk, str):
                if self._open is None:
                    self._open = chunk
                    sections.append(TextSection(markdown=chunk))
                else:
                    self._open += chunk
            else:
                self._open = None
                sections.append(TextSection(value=chunk))
        if self._open is not None:
            del sections[-1]
            settled, self._open = cut(self._open)
            sections.extend(TextSection(markdown=text) for text in settled)
            sections.append(TextSection(markdown=self._open))
        self.log.final = len(sections) - (1 if self._open is not None else 0)
        self.log.changed(max(first_changed, 0))


def cut(text: str) -> tuple[list[str], str]:
    """``text`` as the Markdown of settled sections, and that of the section still written."""
    settled: list[str] = []
    while True:
        blocks = _top_level_blocks(text)
        if len(blocks) >= 2:
            start = _line_offset(text, blocks[-1].map[0] if blocks[-1].map else 0)
            if start > 0:
                settled.append(text[:start])
                text = text[start:]
                continue
        if len(text) > MAX_SECTION_CHARS:
            # A line break, else a space: one endless line costs a paragraph break in its
            # middle rather than all of it again for each chunk.
            line_break = text.rfind("\n", 0, MAX_SECTION_CHARS)
            if line_break <= 0:
                line_break = text.rfind(" ", 0, MAX_SECTION_CHARS)
            rest = (_open_fence(blocks) or "") + text[line_break + 1 :]
            if line_break > 0 and len(rest) < len(text):
                settled.append(text[: line_break + 1])
                text = rest
                continue
        return settled, text


def _top_level_blocks(text: str) -> list[Token]:
    return [
        token
        for token in markdown.parse(text)
        if token.level == 0 and token.nesting >= 0 and token.map is not None
    ]


def _line_offset(text: str, line: int) -> int:
    """Where line number ``line`` (from 0) of ``text`` starts."""
    offset = 0
    for _ in range(line):
        found = text.find("\n", offset)
        if found < 0:
            return len(text)
        offset = found + 1
    return offset


def _open_fence(blocks: list[Token]) -> str | None:
    """The opening line of a fenced code block that ``blocks`` end inside, if they do: cut
    there, the rest is code still, and its section starts with the same fence."""
    if not blocks or blocks[-1].type != "fence":
        return None
    fence = blocks[-1]
    return f"{fence.markup}{fence.info}\n"
