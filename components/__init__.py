"""ReactPy hooks and components that show Runstream streams live, and the helper that serves
ReactPy from a Flask app.

    from runstream.components import mount, use_realtime_stream, StreamView

The hooks depend on ReactPy and the SDK's reading interface (:mod:`runstream.reading`) only;
inside a Runstream server they read in-process, anywhere else over the server's websockets.
:func:`mount` serves a root component from a Flask app, every open page a task of the
process's one event loop (:mod:`runstream.components.serving`); the dashboard is served so.
"""

from .hook import RealtimeStream, use_realtime_stream
from .serving import mount
from .stream_view import StreamView

__all__ = ["RealtimeStream", "StreamView", "mount", "use_realtime_stream"]
