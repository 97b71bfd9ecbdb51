"""``StreamView``: one run stream, live — as a list of chunks or as Markdown text.

The page's small script (static/runstream.js) adds what needs the browser: copying the text to
the clipboard, and keeping the view scrolled to the newest chunk while the reader is at the
bottom.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from markdown_it import MarkdownIt
from reactpy import component, html, use_ref, use_state
from reactpy.core.types import VdomDict
from reactpy.utils import html_to_vdom

from .hook import use_realtime_stream

# html=False: text from a stream is shown, never interpreted as HTML.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})


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


def render_markdown(text: str) -> VdomDict:
    return html_to_vdom(f"<div class='markdown'>{_markdown.render(text)}</div>")


@component
def StreamView(
    run_id: str,
    stream_key: str = "default",
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    throttle_in_ms: int = 50,
    timeout_in_seconds: int = 600,
) -> VdomDict:
    mode, set_mode = use_state("list")
    times = use_ref(cast(list[datetime], []))
    stream = use_realtime_stream(
        run_id,
        stream_key,
        base_url=base_url,
        access_token=access_token,
        throttle_in_ms=throttle_in_ms,
        timeout_in_seconds=timeout_in_seconds,
        on_data=lambda _chunk: times.current.append(datetime.now(UTC)),
    )
    parts = stream.parts or []
    live = stream.error is None and not stream.is_complete
    body_id = f"stream-{run_id}-{stream_key}"

    if stream.error is not None:
        body: VdomDict = html.p({"class_name": "stream-error"}, f"Error: {stream.error}")
    elif not parts:
        body = html.p(
            {"class_name": "stream-empty"},
            "Waiting for data…" if live else "No data received",
        )
    elif mode == "list":
        body = html.ol(
            {"class_name": "chunk-list"},
            [
                html.li(
                    {"key": str(index), "class_name": "chunk"},
                    html.span({"class_name": "chunk-index"}, str(index)),
                    html.time(
                        {"class_name": "chunk-time"},
                        _clock(times.current[index]) if index < len(times.current) else "",
                    ),
                    html.pre({"class_name": "chunk-value"}, chunk_text(chunk)),
                )
                for index, chunk in enumerate(parts)
            ],
        )
    else:
        body = render_markdown("".join(chunk_text(chunk) for chunk in parts))

    return html.section(
        {"class_name": "stream-view", "data-stream-key": stream_key},
        html.header(
            {"class_name": "stream-header"},
            html.span(
                {"class_name": "status " + ("live" if live else "disconnected")},
                "Live" if live else ("Complete" if stream.is_complete else "Disconnected"),
            ),
            html.strong({"class_name": "stream-key"}, stream_key),
            html.span({"class_name": "chunk-count"}, f"{len(parts)} chunks"),
            html.div(
                {"class_name": "stream-tools"},
                html.button(
                    {
                        "class_name": "active" if mode == "list" else "",
                        "on_click": lambda _event: set_mode("list"),
                    },
                    "List",
                ),
                html.button(
                    {
                        "class_name": "active" if mode == "text" else "",
                        "on_click": lambda _event: set_mode("text"),
                    },
                    "Text",
                ),
                html.button({"data-copy-target": body_id, "class_name": "copy"}, "Copy all"),
            ),
        ),
        html.div({"id": body_id, "class_name": "stream-body", "data-autotail": "true"}, body),
        html.textarea(
            {
                "id": f"{body_id}-text",
                "class_name": "copy-source",
                "read_only": True,
                "hidden": True,
            },
            "".join(chunk_text(chunk) for chunk in parts),
        ),
    )


def _clock(moment: datetime) -> str:
    local = moment.astimezone()
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
