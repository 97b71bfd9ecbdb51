"""``StreamView``: one run stream, live — as its text (Markdown, or one block of pretty JSON
per chunk) or as the list of its chunks with when each was written.

A new chunk costs the page about its own size, however long the stream: the view renders once,
and each chunk, or the Markdown section it extends, renders by itself (:mod:`.growing`,
:mod:`.text_sections`); the header's count and status are a small component of their own.

The component's script and styles (``runstream.static``: ``stream-view.js`` and
``stream-view.css``) add what needs the browser: copying the whole text to the clipboard, times
in the reader's own timezone, and keeping the view scrolled to the newest chunk while the reader
is at the bottom.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from reactpy import component, html, use_effect, use_ref, use_state
from reactpy.core.types import VdomDict

from runstream.reading import WriteTimes

from .growing import GrowingItems, ItemLog
from .hook import StreamProgress, use_stream_reading
from .text_sections import TextSection, TextSections

# Values nested deeper than this are shown on one line: pretty-printing indents by level, and
# Python's indenting encoder recurses by level (a chunk nested ~980 deep broke every render).
MAX_PRETTY_DEPTH = 16


def chunk_text(chunk: Any) -> str:
    """Strings as they are; any other JSON value pretty-printed, or on one line when it is
    nested deeply. Never raises, whatever the value: one odd chunk must not break the view."""
    if isinstance(chunk, str):
        return chunk
    if _nesting(chunk, MAX_PRETTY_DEPTH) <= MAX_PRETTY_DEPTH:
        try:
            return json.dumps(chunk, indent=2, ensure_ascii=False)
        except (TypeError, ValueError):
            pass
    return _one_line(chunk)


def _nesting(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and dicts, counted up to ``limit + 1`` at most.
    Iterative: it must not recurse on the values it is there to catch."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth) for child in children)
    return deepest


def _one_line(value: Any) -> str:
    """A JSON value as compact JSON text, built without recursion (the C encoder recurses too,
    and gives up at Python's recursion limit). What JSON cannot hold is shown as its repr."""
    parts: list[str] = []
    # Each entry is a value to write, or a ready piece of text (a bracket, a separator).
    pending: list[tuple[bool, Any]] = [(False, value)]
    while pending:
        is_text, item = pending.pop()
        if is_text:
            parts.append(item)
        elif isinstance(item, list):
            pending.append((True, "]"))
            for index in range(len(item) - 1, -1, -1):
                pending.append((False, item[index]))
                if index:
                    pending.append((True, ","))
            pending.append((True, "["))
        elif isinstance(item, dict):
            entries = list(item.items())
            pending.append((True, "}"))
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                pending.append((False, child))
                pending.append((True, _scalar(str(key)) + ":"))
                if index:
                    pending.append((True, ","))
            pending.append((True, "{"))
        else:
            parts.append(_scalar(item))
    return "".join(parts)


def _scalar(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# JSON values longer than this many lines are shown folded, their first line as the summary.
FOLD_LINES = 12
# How whitespace-only string chunks are shown: visibly, as marks, rather than as empty rows.
WHITESPACE_MARKS = {"\n": "↵", "\r": "␍", "\t": "⇥", " ": "·"}


def copy_text(chunk: Any) -> str:
    """A chunk as "Copy all" puts it on the clipboard: strings as they are, any other value as
    one line of JSON, so that the text of a JSON stream is JSON Lines."""
    return chunk if isinstance(chunk, str) else _one_line(chunk) + "\n"


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of the list view, with when it was written (None where the source does not
    know it: a stream read from another server)."""

    chunk: Any
    written_at: datetime | None


class StreamContent:
    """What a :class:`StreamView` shows of its stream, kept as updates arrive: the rows of the
    list view, the sections of the text view, and the stream's status.

    Each view (list, text) renders from its own :class:`~.growing.ItemLog`; the header's small
    component from :attr:`complete`, :attr:`error` and the count, told by :meth:`watch`."""

    def __init__(self, run_id: str, key: str, source: Any) -> None:
        self.run_id = run_id
        self.key = key
        self.rows: ItemLog[ChunkRow] = ItemLog()
        self.text = TextSections()
        self.complete = False
        self.error: BaseException | None = None
        self._times = source if isinstance(source, WriteTimes) else None
        self._latest: tuple[StreamProgress, bool, BaseException | None] | None = None
        self._taking: asyncio.Task[None] | None = None
        self._watchers: set[Callable[[], None]] = set()

    @property
    def kind(self) -> str | None:
        """ "text" for a stream of strings, "json" for one of other values, by its first chunk;
        None before it."""
        if not self.rows.items:
            return None
        return "text" if isinstance(self.rows.items[0].chunk, str) else "json"

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` after every change; returns how to stop."""
        self._watchers.add(wake)
        return lambda: self._watchers.discard(wake)

    def update(self, progress: StreamProgress, complete: bool, error: BaseException | None) -> None:
        """The reading's update (``on_update`` of :func:`~.hook.use_stream_reading`)."""
        self._latest = (progress, complete, error)
        if self._taking is None or self._taking.done():
            self._taking = asyncio.get_running_loop().create_task(self._take_in())

    def close(self) -> None:
        if self._taking is not None:
            self._taking.cancel()

    async def _take_in(self) -> None:
        """Take in the chunks updates brought, with their write times, in order."""
        while self._latest is not None:
            progress, complete, error = self._latest
            start, stop = len(self.rows.items), progress.shown
            if start < stop:
                chunks = progress.chunks[start:stop]
                times = await self._write_times(start, stop)
                self.rows.items.extend(map(ChunkRow, chunks, times))
                self.rows.final = len(self.rows.items)
                self.rows.changed(start)
                self.text.add(chunks)
            if self._latest == (progress, complete, error):
                self._latest = None
                self.complete, self.error = complete, error
            for wake in list(self._watchers):
                wake()

    async def _write_times(self, start: int, stop: int) -> list[datetime | None]:
        times: list[datetime | None] = []
        if self._times is not None:
            try:
                times.extend(await self._times.write_times(self.run_id, self.key, start, stop))
            except Exception:  # the times are shown where known: without them, the chunks still are
                times.clear()
        return times + [None] * (stop - start - len(times))


@component
def StreamView(
    run_id: str,
    stream_key: str = "default",
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    throttle_in_ms: int = 50,
    timeout_in_seconds: int = 600,
    copy_url: str | None = None,
) -> VdomDict:
    """One run stream, live. ``copy_url`` is where "Copy all" fetches the stream's whole text
    from (the dashboard's); without it the button copies the text the page shows."""
    mode, set_mode = use_state("text")
    content_ref = use_ref(cast(StreamContent | None, None))

    def take(progress: StreamProgress, complete: bool, error: BaseException | None) -> None:
        if content_ref.current is not None:
            content_ref.current.update(progress, complete, error)

    reading = use_stream_reading(
        run_id,
        stream_key,
        access_token=access_token,
        base_url=base_url,
        on_data=None,
        on_update=take,
        timeout_in_seconds=timeout_in_seconds,
        start_index=0,
        throttle_in_ms=throttle_in_ms,
        enabled=True,
    )
    content = content_ref.current
    if content is None or (content.run_id, content.key) != (run_id, stream_key):
        content = content_ref.current = StreamContent(run_id, stream_key, reading.source)
    kind = _use_kind(content)

    @use_effect(dependencies=[content])
    def end() -> Callable[[], None]:
        return content.close

    body_id = f"stream-{run_id}-{stream_key}"
    copy = {"class_name": "copy", "type": "button", "data-copy-target": body_id}
    if copy_url is not None:
        copy["data-copy-url"] = copy_url
    body: VdomDict
    if mode == "text":
        body = html.div(
            {"class_name": "markdown stream-text"},
            GrowingItems(content.text.log, _section, key="text"),
        )
    else:
        body = html.ol({"class_name": "chunk-list"}, GrowingItems(content.rows, _row, key="rows"))
    return html.section(
        {"class_name": "stream-view", "data-stream-key": stream_key, "data-kind": kind or ""},
        html.header(
            {"class_name": "stream-header"},
            html.strong({"class_name": "stream-key"}, stream_key),
            StreamStatus(content),
            html.div(
                {"class_name": "stream-tools", "role": "group", "aria-label": "view"},
                _mode_button("JSON" if kind == "json" else "Text", "text", mode, set_mode),
                _mode_button("Chunks", "list", mode, set_mode),
                html.button(copy, "Copy all"),
            ),
        ),
        StreamNotice(content),
        html.div(
            {"id": body_id, "class_name": "stream-body", "data-autotail": "true", "tabindex": 0},
            body,
        ),
    )


def _mode_button(label: str, mode: str, current: str, set_mode: Callable[[str], None]) -> VdomDict:
    return html.button(
        {
            "type": "button",
            "class_name": "active" if mode == current else "",
            "aria-pressed": "true" if mode == current else "false",
            "on_click": lambda _event: set_mode(mode),
        },
        label,
    )


def _use_kind(content: StreamContent) -> str | None:
    """The stream's kind, rendering the view again once when the first chunk tells it."""
    _, set_version = use_state(0)
    kind = content.kind

    @use_effect(dependencies=[content, kind])
    def listen() -> Callable[[], None] | None:
        if kind is not None:
            return None

        def wake() -> None:
            if content.kind is not None:
                set_version(lambda version: version + 1)

        stop = content.watch(wake)
        wake()  # the first chunk may have come between the render and now
        return stop

    return kind


def _use_changes(content: StreamContent, shown: Callable[[], object]) -> None:
    """Render again when what ``shown()`` says the component shows of ``content`` changed:
    for the small components of the view."""
    _, set_version = use_state(0)
    rendered = use_ref(cast(object, None))
    rendered.current = shown()

    @use_effect(dependencies=[content])
    def listen() -> Callable[[], None]:
        def wake() -> None:
            if shown() != rendered.current:
                set_version(lambda version: version + 1)

        stop = content.watch(wake)
        wake()  # it may have changed between the render and now
        return stop


@component
def StreamStatus(content: StreamContent) -> VdomDict:
    """The stream's status and its number of chunks."""
    _use_changes(content, lambda: (content.error is None, content.complete, len(content.rows)))
    live = content.error is None and not content.complete
    count = len(content.rows)
    return html._(
        html.span(
            {"class_name": "status " + ("live" if live else "disconnected")},
            "Live" if live else ("Complete" if content.complete else "Disconnected"),
        ),
        html.span({"class_name": "chunk-count"}, f"{count} chunk" + ("" if count == 1 else "s")),
    )


@component
def StreamNotice(content: StreamContent) -> VdomDict:
    """What went wrong, or that nothing came yet: the view's one line of news."""
    _use_changes(content, lambda: (content.error, bool(content.rows.items), content.complete))
    if content.error is not None:
        return html.p({"class_name": "stream-error", "role": "alert"}, f"Error: {content.error}")
    if content.rows.items:
        return html._()
    waiting = not content.complete
    return html.p(
        {"class_name": "stream-empty", "role": "status"},
        "Waiting for data…" if waiting else "No data received",
    )


def _row(log: ItemLog[ChunkRow], index: int) -> VdomDict:
    row = log.items[index]
    return html.li(
        {"class_name": "chunk"},
        html.span({"class_name": "chunk-index"}, str(index)),
        _written(row.written_at),
        _value(row.chunk),
    )


def _section(log: ItemLog[TextSection], index: int) -> VdomDict:
    section = log.items[index]
    if section.markdown is not None:
        return section.html
    return html.div({"class_name": "json-block"}, _value(section.value))


def _written(moment: datetime | None) -> VdomDict:
    """When the chunk was written: the time of day in UTC, which the page's script shows in the
    reader's timezone; the date and zone in its title."""
    if moment is None:
        return html.span({"class_name": "chunk-time"})
    moment = moment.astimezone(UTC)
    clock = moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return html.time(
        {
            "class_name": "chunk-time",
            "datetime": stamp,
            "title": f"{moment:%Y-%m-%d} {clock} UTC",
        },
        clock,
    )


def _value(chunk: Any) -> VdomDict:
    if isinstance(chunk, str):
        if chunk and not chunk.strip():
            marks = "".join(WHITESPACE_MARKS.get(character, "␣") for character in chunk)
            return html.span(
                {"class_name": "chunk-value whitespace", "title": _whitespace_name(chunk)}, marks
            )
        return html.pre({"class_name": "chunk-value"}, chunk)
    text = chunk_text(chunk)
    lines = text.count("\n") + 1
    if lines <= FOLD_LINES:
        return html.pre({"class_name": "chunk-value json"}, text)
    return html.details(
        {"class_name": "chunk-value json"},
        html.summary(f"{text.splitlines()[0]} … {lines} lines"),
        html.pre(text),
    )


def _whitespace_name(chunk: str) -> str:
    if chunk == "\n":
        return "a line break"
    if set(chunk) == {"\n"}:
        return f"{len(chunk)} line breaks"
    return f"{len(chunk)} whitespace characters"
