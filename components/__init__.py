"""ReactPy hooks and components that show Runstream streams live.

    from runstream.components import use_realtime_stream, StreamView

They depend on ReactPy and the SDK's reading interface (:mod:`runstream.reading`) only; inside
a Runstream server they read in-process, anywhere else over the server's websockets.
"""

from .hook import RealtimeStream, use_realtime_stream
from .stream_view import StreamView

__all__ = ["RealtimeStream", "StreamView", "use_realtime_stream"]
