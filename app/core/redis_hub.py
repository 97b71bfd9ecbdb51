"""The Redis hub: a :class:`.SpanningHub` over Redis pub/sub (``RUNSTREAM_REDIS_URL``).

Every process PUBLISHes its commits on one channel and subscribes to it, over one pub/sub
connection per process whatever its number of readers. Redis carries a commit of any size, so
the hub's own limit (:data:`.MAX_CARRIED_BYTES`) decides which ones go by position only.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .spanning_hub import DEAD_AFTER, PING_EVERY, POLL, RESYNC_INTERVAL, SOCKET_TIMEOUT, SpanningHub

CHANNEL = "runstream:commits"


class RedisHub(SpanningHub):
    """A hub shared by every process that subscribes to ``channel`` on the Redis at ``url``."""

    service = "Redis"
    errors = (redis.RedisError,)

    def __init__(
        self, url: str, *, channel: str = CHANNEL, resync_interval: float = RESYNC_INTERVAL
    ) -> None:
        self._channel = channel
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # No retries inside redis-py: the hub backs off itself, and must see each failure
            # to know that a commit may be lost.
            retry=Retry(NoBackoff(), 0),
        )
        super().__init__(url, resync_interval=resync_interval)

    def _send(self, message: bytes) -> None:
        self._client.publish(self._channel, message)

    def _check(self) -> None:
        self._client.ping()

    def _listen(self) -> None:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]  # redis-py < 8.2 leaves it untyped
        try:
            pubsub.subscribe(self._channel)
            heard = pinged = time.monotonic()
            while not self._closing:
                message = pubsub.get_message(timeout=POLL)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._handle(message)
                elif now - heard > DEAD_AFTER:
                    raise redis.ConnectionError(f"no answer for {DEAD_AFTER:g} s")
                if now - pinged >= PING_EVERY:
                    pubsub.ping()
                    pinged = now
        finally:
            pubsub.close()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            self._listening_now()
        elif message["type"] == "message":
            self._received(message["data"])

    def _close_transport(self) -> None:
        self._client.close()
