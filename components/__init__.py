"""ReactPy hooks and components that show Runstream streams live, and the helper that serves
ReactPy from a Flask app.

    from runstream.components import mount, use_realtime_stream, StreamView

The hooks depend on ReactPy and the SDK's interfaces (:mod:`runstream.reading` for streams,
:class:`runstream.runs.RunSource` for runs and triggers) only; inside a Runstream server they
read in-process, anywhere else over the server's websockets and HTTP API
(:mod:`.run_hooks`: ``use_realtime_run``, ``use_task_trigger``).
:func:`mount` serves a root component from a Flask app, every open page a task of the
process's one event loop (:mod:`runstream.components.serving`); the dashboard is served so.
"""

from .hook import RealtimeStream, use_realtime_stream
from .run_hooks import RealtimeRun, TaskTrigger, use_realtime_run, use_task_trigger
from .serving import mount
from .stream_view import StreamView

__all__ = [
    "RealtimeRun",
    "RealtimeStream",
    "StreamView",
    "TaskTrigger",
    "mount",
    "use_realtime_run",
    "use_realtime_stream",
    "use_task_trigger",
]
