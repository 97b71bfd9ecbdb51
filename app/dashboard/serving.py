"""Serving ReactPy views from the Runstream app, leaving nothing behind when a view closes.

ReactPy 1.1's own Flask backend starts, per view, a dispatcher thread and a sender thread that
is never stopped. Here each view costs the websocket's request thread, simple-websocket's reader
thread and one dispatcher thread running the view's event loop; when the browser goes away the
view's task is cancelled, its loop's worker threads are shut down, and the dispatcher thread
ends. Messages from the request thread enter the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, abort, copy_current_request_context, request, send_file
from flask.typing import ResponseReturnValue
from flask_sock import ConnectionClosed, Sock
from reactpy import Layout
from reactpy.backend._common import (
    CommonOptions,
    read_client_index_html,
    safe_client_build_dir_path,
    safe_web_modules_dir_path,
)
from reactpy.backend.types import Connection, Location
from reactpy.core.hooks import ConnectionContext
from reactpy.core.serve import serve_layout
from reactpy.core.types import RootComponentConstructor, VdomDict

# How long a closing view may take to wind down before its thread is left to finish alone.
VIEW_SHUTDOWN_SECONDS = 5.0


def mount(
    app: Flask,
    root: RootComponentConstructor,
    *,
    head: list[VdomDict],
    pages: list[str],
    allowed: Callable[[], bool],
) -> None:
    """Serve ``root`` at each of ``pages`` (Flask rule strings); ``allowed()`` guards them."""
    blueprint = Blueprint("reactpy", __name__, url_prefix="/_reactpy")
    index_html = read_client_index_html(CommonOptions(head=head))

    @blueprint.route("/assets/<path:path>")
    def assets(path: str) -> ResponseReturnValue:
        return send_file(safe_client_build_dir_path(f"assets/{path}"))

    @blueprint.route("/modules/<path:path>")
    def modules(path: str) -> ResponseReturnValue:
        return send_file(safe_web_modules_dir_path(path), mimetype="text/javascript")

    sock = Sock(blueprint)

    def stream(ws: Any, path: str) -> None:
        if not allowed():
            ws.close(reason=4401, message="sign in to the dashboard first")
            return
        serve_view(ws, root, "/" + path, request.query_string.decode())

    sock.route("/stream/<path:path>", bp=blueprint)(stream)

    app.register_blueprint(blueprint)

    def page(**_: str) -> ResponseReturnValue:
        if not allowed():
            abort(401)
        return index_html

    for rule in pages:
        app.add_url_rule(rule, endpoint=f"page:{rule}", view_func=page)


def serve_view(ws: Any, root: RootComponentConstructor, pathname: str, search: str) -> None:
    """Run one view until its browser goes away; return only when its thread has ended."""
    loop = asyncio.new_event_loop()
    incoming: asyncio.Queue[Any] | None = None
    started = threading.Event()
    view: asyncio.Task[None] | None = None

    async def send(message: Any) -> None:
        ws.send(json.dumps(message))

    async def receive() -> Any:
        assert incoming is not None
        return await incoming.get()

    @copy_current_request_context
    def run() -> None:
        nonlocal incoming, view
        asyncio.set_event_loop(loop)
        incoming = asyncio.Queue()
        connection = Connection(
            scope=request.environ,
            location=Location(pathname=pathname, search=f"?{search}" if search else ""),
            carrier=ws,
        )
        layout = Layout(ConnectionContext(root(), value=connection))
        view = loop.create_task(serve_layout(layout, send, receive))
        started.set()
        try:
            loop.run_until_complete(view)
        except BaseException as error:
            if not _browser_went_away(error):
                raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    dispatcher = threading.Thread(target=run, name="runstream-view", daemon=True)
    dispatcher.start()
    started.wait()
    try:
        while True:
            message = json.loads(ws.receive())
            loop.call_soon_threadsafe(incoming.put_nowait, message)  # type: ignore[union-attr]
    except (ConnectionClosed, TypeError, ValueError):
        pass  # the browser went away, or sent something that is not a ReactPy message
    finally:
        if view is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed already
                loop.call_soon_threadsafe(view.cancel)
        dispatcher.join(VIEW_SHUTDOWN_SECONDS)


def _browser_went_away(error: BaseException) -> bool:
    """True for how a view ends when its browser leaves: cancelled, or a send to a closed
    socket — alone, or as every error of the group that ReactPy's task group raises."""
    if isinstance(error, BaseExceptionGroup):
        return all(_browser_went_away(inner) for inner in error.exceptions)
    return isinstance(error, asyncio.CancelledError | ConnectionClosed | OSError)
