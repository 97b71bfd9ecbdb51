"""A run's streams: JSON streams in the store at ``runs/<run_id>/<key>``.

A run has any number of streams, keyed by name (``default`` when no key is given). Each is an
ordinary durable stream, so the Durable Streams protocol reads and writes it at
``/v1/stream/runs/<run_id>/<key>``; chunk *n* of a run stream is its message at position *n*.

A run stream is created by its first write. It ends — it is closed, and readers get a clear end
after the last chunk — when someone closes it, or when its run has reached a final status and no
writer is still writing to it. A writer that vanished without saying goodbye stops counting
after ``writer_timeout`` seconds of silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from runstream.identifiers import DEFAULT_KEY, InvalidIdentifier, check_run_id, check_stream_key
from runstream.wire import MAX_RUN_CHUNK_BYTES, encode_chunk

from ..core.content_types import JSON, is_json
from ..core.errors import Gone, Invalid, NotFound
from ..core.follower import Batch, batch_of
from ..core.hub import Commit
from ..core.store import (
    AppendRequest,
    AppendResult,
    CreateRequest,
    ProducerClaim,
    ProducerState,
    Store,
    StreamInfo,
)
from .runs import RunRecord, Runs

PREFIX = "runs/"


def stream_path(run_id: str, key: str = DEFAULT_KEY) -> str:
    return f"{PREFIX}{check_run_id(run_id)}/{check_stream_key(key)}"


def parse_stream_path(path: str) -> tuple[str, str] | None:
    """The (run id, key) of a run stream's path; None for any other stream."""
    if not path.startswith(PREFIX):
        return None
    run_id, _, key = path[len(PREFIX) :].partition("/")
    return run_id, key


class RunStreamReading:
    """How a follower reads one run stream (see :mod:`runstream.server.core.follower`).

    A stream that does not exist yet is empty until its first write, unless its run has ended:
    then it has ended too. A stream that existed and vanished was deleted. ``max_bytes`` bounds
    what one read returns (at least one chunk is returned, whatever its size).
    """

    def __init__(self, run_streams: RunStreams, run_id: str, key: str, max_bytes: int) -> None:
        self.path = stream_path(run_id, key)
        self._run_streams = run_streams
        self._run_id = run_id
        self._key = key
        self._max_bytes = max_bytes
        self._existed = False
        run_streams.runs.get(run_id)  # NotFound for a run that does not exist

    def read(self, position: int | None) -> Batch:
        assert position is not None  # run stream readers always start at a chunk index
        try:
            result = self._run_streams.store.read(
                self.path, position, max_bytes=self._max_bytes, past_tail_ok=True
            )
        except NotFound:
            if self._existed:
                raise Gone(f"stream {self._key!r} of run {self._run_id} was deleted") from None
            ended = self._run_streams.runs.get(self._run_id).status.is_final
            return Batch(position, [], position, ended)
        self._existed = True
        return batch_of(result)


class RunStreams:
    def __init__(
        self, store: Store, runs: Runs, *, retention_seconds: int, writer_timeout: float
    ) -> None:
        self.store = store
        self.runs = runs
        self.retention_seconds = retention_seconds
        self.writer_timeout = writer_timeout
        runs.on_finish(self.run_finished)

    def creation(self, run_id: str, key: str) -> CreateRequest:
        """How the run's stream is created by its first write; 404 if the run does not exist."""
        stream_path(run_id, key)
        self.runs.get(run_id)
        return CreateRequest(content_type=JSON, retention_seconds=self.retention_seconds)

    def check_new_stream(self, run_id: str, key: str, *, content_type: str) -> None:
        """Refuse to create a run stream that is not a JSON stream of an existing run."""
        stream_path(run_id, key)
        if not is_json(content_type):
            raise Invalid(
                f"a run's streams hold JSON chunks: create them as {JSON}, not {content_type!r}"
            )
        self.runs.get(run_id)

    def streams(self, run_id: str) -> list[StreamInfo]:
        return self.store.streams_under(f"{PREFIX}{check_run_id(run_id)}/")

    def write_times(self, run_id: str, key: str, start: int, stop: int) -> list[datetime]:
        """When each chunk from ``start`` up to ``stop`` was written."""
        return self.store.write_times(stream_path(run_id, key), start, stop)

    # -- writers -----------------------------------------------------------------------------

    def open_writer(self, run_id: str, key: str, writer_id: str) -> ProducerState:
        """Start (or resume) a writer's session: its epoch, and the number of its last stored
        chunk (-1 for none). Writes of an older session of the same writer are fenced off."""
        return self.store.open_writer(
            stream_path(run_id, key), writer_id, create_if_missing=self.creation(run_id, key)
        )

    def keep_writer(self, run_id: str, key: str, writer_id: str, epoch: int) -> None:
        self.store.keep_writer(stream_path(run_id, key), writer_id, epoch)

    def write(
        self,
        run_id: str,
        key: str,
        writer_id: str,
        epoch: int,
        first_seq: int,
        chunks: Sequence[Any],
    ) -> AppendResult:
        """Append chunks numbered ``first_seq`` onwards by their writer, each exactly once."""
        messages = [_encoded(chunk) for chunk in chunks]
        return self.store.append(
            stream_path(run_id, key),
            AppendRequest(
                messages=messages,
                content_type=JSON,
                producer=ProducerClaim(writer_id, epoch, first_seq),
                seq_per_message=True,
                max_message_bytes=MAX_RUN_CHUNK_BYTES,
            ),
        )

    def close_writer(self, run_id: str, key: str, writer_id: str) -> None:
        """The writer is done; if its run has ended and no one else writes, the stream ends."""
        path = stream_path(run_id, key)
        self.store.close_writer(path, writer_id)
        if self.runs.get(run_id).status.is_final:
            self.store.close_unless_writing(path, writer_timeout=self.writer_timeout)

    # -- the end of a run --------------------------------------------------------------------

    def run_finished(self, run: RunRecord) -> None:
        for stream in self.streams(run.id):
            self.store.close_unless_writing(stream.path, writer_timeout=self.writer_timeout)
        # Readers of streams the run never wrote learn that those have ended too.
        self.store.hub.publish(Commit.changed_under(f"{PREFIX}{run.id}/"))

    def close_abandoned(self) -> int:
        """Close the open streams of ended runs whose writers have all gone; return how many."""
        closed = 0
        for stream in self.store.streams_under(PREFIX):
            parsed = parse_stream_path(stream.path)
            if stream.closed or parsed is None:
                continue
            try:
                ended = self.runs.get(parsed[0]).status.is_final
            except (NotFound, Invalid, InvalidIdentifier):
                ended = True  # a stream under runs/ whose run is gone has no one to end it
            if ended and self.store.close_unless_writing(
                stream.path, writer_timeout=self.writer_timeout
            ):
                closed += 1
        return closed


def _encoded(chunk: Any) -> bytes:
    """A chunk as the store keeps it; what JSON cannot carry is refused, never altered."""
    try:
        return encode_chunk(chunk).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise Invalid(f"a chunk is not a JSON value this server can store: {error}") from None
