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


def chunk_text(chunk: Any) -> str:
    """Strings as they are; any other JSON value pretty-printed."""
    return chunk if isinstance(chunk, str) else json.dumps(chunk, indent=2, ensure_ascii=False)


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
