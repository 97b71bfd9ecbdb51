"""The whole text of a run stream, for the stream view's "Copy all":
``GET /runs/<run_id>/streams/<key>.txt``, for a browser signed in to the dashboard.

The page holds the stream as it renders it (Markdown made into HTML, long JSON folded), not its
text; so the button fetches the text from here. It is read page by page and streamed, never held
whole, as the Durable Streams catch-up read is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from flask import Flask, Response, abort

from runstream.components.stream_view import copy_text

from ..faces.errors import REFUSALS, answer_for, message_of
from ..runs.run_streams import stream_path
from ..runtime import runtime


def init_app(app: Flask, allowed: Callable[[], bool]) -> None:
    def stream_text(run_id: str, key: str) -> Response:
        if not allowed():
            abort(401)
        app_runtime = runtime()
        store = app_runtime.store
        try:
            plan = store.plan_read(
                stream_path(run_id, key), 0, max_bytes=app_runtime.settings.max_stream_bytes
            )
        except REFUSALS as refusal:  # a bad run id or key, a stream that does not exist
            return Response(
                message_of(refusal) + "\n",
                status=answer_for(refusal).status,
                content_type="text/plain; charset=utf-8",
            )
        pages = store.pages(plan, page_bytes=app_runtime.settings.max_read_bytes)
        response = Response(_text(pages), content_type="text/plain; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    app.add_url_rule(
        "/runs/<run_id>/streams/<key>.txt", endpoint="stream_text", view_func=stream_text
    )


def _text(pages: Iterator[list[bytes]]) -> Iterator[bytes]:
    for page in pages:
        yield "".join(copy_text(json.loads(message)) for message in page).encode()
