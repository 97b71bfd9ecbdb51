"""The process's one asyncio event loop, running in a daemon thread.

Everything asynchronous that Runstream runs for code that has no event loop of its own runs
here, as tasks of this one loop: the blocking SDK (:mod:`runstream.sync`), the ReactPy views of
:func:`runstream.components.mount`, and the demo worker of ``runstream serve --demo``.

One loop, never one per caller: a thread and a loop per view would cost a thread per open page,
and under gevent (``gunicorn -k gevent``, threads monkey-patched into greenlets) a process can
run only one asyncio loop at a time at all, because the running loop belongs to the operating
system thread that every greenlet shares. Under gevent the daemon thread is a greenlet and the
loop's selector is gevent's, so the loop waits cooperatively beside the request handlers.

Submit work with :func:`asyncio.run_coroutine_threadsafe` or ``call_soon_threadsafe``; both run
it in a copy of the caller's context variables. Never block on that work from the loop's own
thread (:func:`in_process_loop`): it would wait for itself.
"""

from __future__ import annotations

import asyncio
import os
import threading

_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
# The process that started the loop: a forked child (a gunicorn worker of an arbiter that had
# started it) inherits the loop's object but not its thread, and starts a loop of its own.
_pid: int | None = None
_lock = threading.Lock()


def process_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, started on first use (and anew in a forked child)."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="runstream-event-loop", daemon=True
            )
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def in_process_loop() -> bool:
    """True when the caller runs on the process loop's own thread (or greenlet)."""
    return _pid == os.getpid() and threading.current_thread() is _thread
