"""``mount``: serve a ReactPy component from a Flask app, every view a task of one event loop.

    from runstream.components import mount

    mount(app, "/answers", Page)  # Page at /answers and every path under it

It serves what ReactPy's client needs: its page, its scripts, the web modules, and the
websocket on which a view sends its layout updates and receives the browser's events. Each
open page is one task on the process's event loop (:mod:`runstream.event_loop`), the loop that
the blocking SDK also uses; besides that task it holds only its websocket connection: the
request's handler thread and simple-websocket's reader thread (greenlets under gevent).
ReactPy 1.1's own Flask backend instead starts, per view, a thread with an event loop of its
own and a sender thread that never ends; under gevent only one view could run at all.

The handler and the view meet in two places. The browser's events enter the loop through
``call_soon_threadsafe``. The view's updates go into a bounded outbox that the handler sends
from, so a slow browser never blocks the loop (and every other view on it); a view whose
browser falls :data:`OUTBOX_LIMIT` updates behind is closed rather than buffered without end,
and the browser's client reconnects to a fresh one. When the browser goes away, the handler
cancels the view's task, which unmounts its components and ends their effects, and returns
once the task has ended: nothing of the view is left behind.

ReactPy 1.1 keeps the stack of the components being rendered per thread, which is right for a
view per thread and wrong for many views on one loop: a render yields midway (at the lock of
each component, an anyio semaphore), another view renders meanwhile, and each then finds the
other's components on the stack ("Hook stack is in an invalid state", or a component given
another view's context, such as its location). So :func:`mount` makes ReactPy keep that stack
per view instead (:class:`HookStackPerView`), as ReactPy 2 does with a context variable; every
other use of ReactPy keeps its stack per thread, as before.

Flask is imported by :func:`mount` only, so that ``runstream.components`` costs a UI that is no
Flask app nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reactpy import Layout
from reactpy.backend._common import (
    CLIENT_BUILD_DIR,
    PATH_PREFIX,
    STREAM_PATH,
    CommonOptions,
    read_client_index_html,
)
from reactpy.backend.types import Connection, Location
from reactpy.config import REACTPY_WEB_MODULES_DIR
from reactpy.core import _life_cycle_hook
from reactpy.core._life_cycle_hook import LifeCycleHook
from reactpy.core._thread_local import ThreadLocal
from reactpy.core.hooks import ConnectionContext
from reactpy.core.serve import serve_layout
from reactpy.core.types import LayoutUpdateMessage, RootComponentConstructor, VdomDict

from runstream.event_loop import process_loop
from runstream.whole_sends import send_whole
from runstream.wire import CLOSE_INVALID, CLOSE_UNAUTHENTICATED

if TYPE_CHECKING:
    from flask import Flask
    from flask.typing import ResponseReturnValue

log = logging.getLogger(__name__)

# How many layout updates a view may have waiting for its browser before it is closed.
OUTBOX_LIMIT = 64
# The browser's events waiting for the view, past which the page is closed: a page that sends
# faster than its view handles would otherwise fill the process's memory, and delay every
# other view on the loop.
INBOX_LIMIT = 1024
# The websocket close code for a view closed because its browser fell that far behind: "try
# again later", which ReactPy's client does on its own.
CLOSE_FELL_BEHIND = 1013
# How long a closing view's task may take to end before its handler stops waiting for it.
VIEW_SHUTDOWN_SECONDS = 5.0

Head = Sequence[VdomDict] | VdomDict | str

# The stack of the components a view is rendering: set in each view's task, and so shared by
# the tasks that the view's task starts (its renders, its events, its effects), and nothing else.
_view_hook_stack: contextvars.ContextVar[list[LifeCycleHook]] = contextvars.ContextVar(
    "runstream_view_hook_stack"
)


def mount(
    app: Flask,
    path: str,
    root: RootComponentConstructor,
    *,
    head: Head | None = None,
    allowed: Callable[[], bool] | None = None,
) -> None:
    """Serve ``root`` at ``path`` and every path under it, with ReactPy's client.

    ``head`` is what the page's ``<head>`` holds (ReactPy's title and icon by default): a list
    of ``reactpy.html`` elements, or HTML text. ``allowed()``, called in the request of each
    page and of each view's websocket, may refuse them: a page with ``401`` (the app's error
    handler for 401 decides what the browser sees, a redirect to a sign-in page for example),
    a websocket by closing it with code 4401. Mount once per app: ReactPy's client always asks
    for its scripts and its websocket under ``/_reactpy``.

    Mounting makes ReactPy keep its stack of the components being rendered per view, for every
    view of the process (see the module's documentation).
    """
    from flask import Blueprint, abort, request, send_from_directory
    from flask_sock import Sock

    if not isinstance(_life_cycle_hook._HOOK_STATE, HookStackPerView):
        _life_cycle_hook._HOOK_STATE = HookStackPerView(list)
    # ReactPy logs, at INFO, every event whose handler is gone: any page could write the log
    # full at will (and a log that stalls stalls the server). Its warnings still show.
    logging.getLogger("reactpy.core.layout").setLevel(logging.WARNING)
    prefix = ("/" + path.strip("/")).rstrip("/")  # "/answers/" is "/answers", and "/" is ""
    blueprint = Blueprint("runstream_components", __name__, url_prefix=str(PATH_PREFIX))
    options = CommonOptions() if head is None else CommonOptions(head=head)
    index_html = read_client_index_html(options)

    @blueprint.route("/assets/<path:filename>")
    def assets(filename: str) -> ResponseReturnValue:
        return send_from_directory(CLIENT_BUILD_DIR / "assets", filename)

    @blueprint.route("/modules/<path:filename>")
    def modules(filename: str) -> ResponseReturnValue:
        return send_from_directory(
            REACTPY_WEB_MODULES_DIR.current, filename, mimetype="text/javascript"
        )

    def view(ws: Any, subpath: str = "") -> None:
        send_whole(ws)
        if allowed is not None and not allowed():
            close(ws, CLOSE_UNAUTHENTICATED, "not allowed: sign in first")
            return
        search = request.query_string.decode()
        connection = Connection(
            scope=request.environ,
            location=Location(
                pathname=request.path.removeprefix(str(STREAM_PATH)) or "/",
                search=f"?{search}" if search else "",
            ),
            carrier=ws,
        )
        View(ws).serve(WholeRenders(ConnectionContext(root(), value=connection)))

    @blueprint.before_request
    def uncompressed() -> None:
        """Views' websockets are not compressed: permessage-deflate keeps a compressor and a
        decompressor for the life of each connection, for updates of a few kilobytes. Measured
        with 500 dashboard pages: 56 MB more memory with it, which the server did not get back
        when they closed, and grew by tens of MB with each new round of pages. The websocket
        library accepts whatever the client offers, so the offer is removed before the
        handshake."""
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)

    sock = Sock()
    stream = str(STREAM_PATH.relative_to(PATH_PREFIX))
    sock.route(f"/{stream}{prefix}", bp=blueprint, endpoint="view")(view)
    sock.route(f"/{stream}{prefix}/<path:subpath>", bp=blueprint, endpoint="view_under")(view)
    app.register_blueprint(blueprint)

    def page(subpath: str = "") -> ResponseReturnValue:
        if allowed is not None and not allowed():
            abort(401)
        return index_html

    app.add_url_rule(prefix or "/", endpoint="runstream_components_page", view_func=page)
    app.add_url_rule(
        f"{prefix}/<path:subpath>", endpoint="runstream_components_page_under", view_func=page
    )


def close(ws: Any, code: int, reason: str) -> None:
    """Close the websocket from this side, and end the sending half of its connection at once.

    Werkzeug's server (``flask run``), once the handler returns, reads and discards what is
    left of the request until the connection ends: were it to read the browser's answer to the
    close before simple-websocket's reader does, each side would wait for the other to end the
    connection. Told of the end, the browser answers and ends it.
    """
    with contextlib.suppress(*connection_gone()):
        ws.close(reason=code, message=reason)
        ws.sock.shutdown(socket.SHUT_WR)


def connection_gone() -> tuple[type[Exception], ...]:
    """What a send (or a close) raises once the browser has gone, however the handler learns of
    it: a closed connection; the socket that the reader closed (EBADF) or the browser reset; or,
    under threads, wsproto refusing a message in the moment between taking the browser's close
    frame and simple-websocket marking the connection closed. Each ends the view quietly, as a
    closed connection does. (Imported here: Flask's websocket stack is :func:`mount`'s alone.)"""
    from flask_sock import ConnectionClosed
    from wsproto.utilities import LocalProtocolError

    return (ConnectionClosed, OSError, LocalProtocolError)


class NotAnEvent(Exception):
    """A browser's message that is no ReactPy event; the view is closed with 4400 and this
    reason."""


def event_of(message: str | bytes) -> dict[str, Any]:
    """A browser's message as the ReactPy event it must be: a text message of
    ``{"type": "layout-event", "target": <str>, "data": <list>}`` (ReactPy's client sends no
    other). Anything else would fail inside the view, whose error would end it with no reason
    said to the browser."""
    if isinstance(message, bytes):
        raise NotAnEvent("a view's messages are text: this one is binary")
    try:
        event = json.loads(message)
    except ValueError:
        raise NotAnEvent("a view's messages are JSON: this one is not") from None
    if (
        not isinstance(event, dict)
        or event.get("type") != "layout-event"
        or not isinstance(event.get("target"), str)
        or not isinstance(event.get("data"), list)
    ):
        raise NotAnEvent(
            'a view\'s messages are {"type": "layout-event", "target": <str>, "data": <list>}'
        )
    return event


class WholeRenders(Layout):
    """A Layout whose renders are never cut short: a view that ends while it renders finishes
    that render first, then unmounts.

    ReactPy 1.1 renders a component tree with awaits between its components (each component's
    lock; the unmounting of the components a render replaces, which waits for their effects to
    stop). Cancelled at one of them, the render leaves components that it mounted or began to
    unmount outside the layout's tree: unmounting the layout never reaches them, so their
    effects never stop. A stream view's effects read its stream and listen for its chunks; cut
    off, they read on and render into a layout that is gone ("Failed to schedule render").

    Only the serial rendering that ReactPy uses by default (REACTPY_ASYNC_RENDERING off).
    """

    async def render(self) -> LayoutUpdateMessage:
        while True:
            # Waiting for a component to render again: the one place a cancel is harmless.
            state_id = await self._rendering_queue.get()
            state = self._model_states_by_life_cycle_state_id.get(state_id)
            if state is None:
                continue  # unmounted since it asked to render
            rendering = asyncio.ensure_future(self._create_layout_update(state))
            try:
                return await asyncio.shield(rendering)
            except asyncio.CancelledError:
                # Finish the render, through any further cancel, then end as asked. (An await
                # of the task itself would pass a cancel on to it.)
                while not rendering.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([rendering])
                raise


class HookStackPerView(ThreadLocal[list[LifeCycleHook]]):
    """ReactPy's stack of the components being rendered: the view's own, inside a view served
    by :func:`mount`; elsewhere the thread's, as ReactPy keeps it."""

    def get(self) -> list[LifeCycleHook]:
        stack = _view_hook_stack.get(None)
        return super().get() if stack is None else stack


class View:
    """One open page: its layout served as a task of the process's loop, and the websocket
    handler (the thread that calls :meth:`serve`) that carries its messages."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._loop = process_loop()
        self._incoming: asyncio.Queue[Any] = asyncio.Queue()
        # Layout updates, as JSON text, from the loop (which appends) to the handler (which
        # sends); a deque's append and popleft are safe across threads.
        self._outbox: deque[str] = deque()
        self._fell_behind = False
        self._flooded = False  # the browser sent more than INBOX_LIMIT events ahead
        self._refused: str | None = None  # why the browser's message was refused
        self._ended = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def serve(self, layout: Layout) -> None:
        """Run the view until its browser goes away (or the view ends); return once its task
        has ended."""
        ended_by: tuple[type[Exception], ...] = (*connection_gone(), ValueError)
        # The view's task runs in a copy of this thread's context: the request's, and the app's.
        self._loop.call_soon_threadsafe(self._start, layout)
        try:
            self._carry_messages()
        except NotAnEvent as refusal:
            self._refused = str(refusal)
        except ended_by:
            pass  # the browser went away
        finally:
            # Callbacks run in the order they were scheduled: the task exists by then.
            self._loop.call_soon_threadsafe(self._cancel)
            self._ended.wait(VIEW_SHUTDOWN_SECONDS)
        if self._refused is not None:
            close(self._ws, CLOSE_INVALID, self._refused)
        elif self._fell_behind:
            close(self._ws, CLOSE_FELL_BEHIND, "the page fell too far behind")
        elif self._flooded:
            close(self._ws, CLOSE_FELL_BEHIND, "the page sent events faster than they are handled")

    def _carry_messages(self) -> None:
        """Hand the browser's events to the view and send the view's updates to the browser,
        until the view ends; raise ConnectionClosed when the browser goes away.

        One event wakes the handler for both: the websocket's own, which simple-websocket's
        reader sets whenever a message arrives or the connection ends, and which the view sets
        after queueing an update (or ending). The event is cleared before both queues are
        emptied, so a message that comes meanwhile sets it again for the next round.
        """
        ws = self._ws
        while not self._ended.is_set():
            ws.event.wait()
            ws.event.clear()
            while (message := ws.receive(timeout=0)) is not None:
                if self._incoming.qsize() >= INBOX_LIMIT:
                    self._flooded = True
                    return
                self._loop.call_soon_threadsafe(self._incoming.put_nowait, event_of(message))
            while self._outbox and not self._ended.is_set():
                ws.send(self._outbox.popleft())

    # -- on the loop ---------------------------------------------------------------------------

    def _start(self, layout: Layout) -> None:
        self._task = self._loop.create_task(self._serve(layout))
        self._task.add_done_callback(self._on_end)

    async def _serve(self, layout: Layout) -> None:
        _view_hook_stack.set([])
        await serve_layout(layout, self._send, self._incoming.get)

    def _cancel(self) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _send(self, update: Any) -> None:
        """Queue an update for the handler to send: a send to the socket here could block the
        loop, and every view on it, for as long as the browser is slow to read."""
        if self._fell_behind:
            return  # the view is being cancelled: its remaining updates are dropped
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._fell_behind = True
            self._cancel()
            return
        self._outbox.append(json.dumps(update))
        self._ws.event.set()

    def _on_end(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a ReactPy view failed", exc_info=task.exception())
        self._ended.set()
        self._ws.event.set()
