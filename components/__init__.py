"""ReactPy components and hooks that show Runstream streams live."""

from .hook import RealtimeStream, use_realtime_stream

__all__ = ["RealtimeStream", "use_realtime_stream"]
