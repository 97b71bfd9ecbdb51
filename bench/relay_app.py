"""A Flask SSE relay of Redis pub/sub: what a Python user would build instead of Runstream to
push a stream's messages to browsers (Flask-SSE and its many copies), and the peer that
``python -m bench`` measures Runstream's SSE delivery against (bench/delivery.py).

    gunicorn -k gevent --chdir bench 'relay_app:create_app("redis://127.0.0.1:6379/0", 4096)'

A POST to ``/v1/stream/<channel>`` publishes its body to the Redis channel; a GET of the same
path streams the channel as ``text/event-stream``, each published body as the data of one
event, from a pub/sub subscription of its own. The paths are those of a Durable Streams server,
so that the benchmark's writer and readers address both alike. It is served as Runstream is: by
gunicorn, one process with its gevent worker, a greenlet per connection. (gunicorn imports this
module in its worker, once gevent has patched the standard library, so that redis-py's sockets
and locks cooperate with gevent.)

Pub/sub keeps nothing: a client gets what is published while it is subscribed, and nothing it
missed, so a stream's GET says ``event: subscribed`` once its subscription holds, from when on
the client gets everything. When a stream is idle the relay sends a comment every
KEEPALIVE_SECONDS, as SSE servers do for proxies; that is also how it notices a client that left.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from flask import Flask, Response, request

KEEPALIVE_SECONDS = 15.0


def create_app(redis_url: str, connections: int) -> Flask:
    """The relay, for up to ``connections`` clients at once: each subscribed one holds a Redis
    connection of its own (redis-py's pool holds 100 unless told)."""
    app = Flask(__name__)
    client = redis.Redis.from_url(redis_url, max_connections=connections)

    @app.post("/v1/stream/<path:channel>")
    def publish(channel: str) -> tuple[str, int]:
        client.publish(channel, request.get_data())
        return "", 204

    @app.get("/v1/stream/<path:channel>")
    def stream(channel: str) -> Response:
        def events() -> Iterator[bytes]:
            # In the generator, so that a HEAD (which never runs it) subscribes to nothing.
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(channel)
                while True:
                    message = pubsub.get_message(timeout=KEEPALIVE_SECONDS)
                    if message is None:
                        yield b": keep-alive\n\n"
                    elif message["type"] == "subscribe":
                        yield b"event: subscribed\ndata: " + channel.encode() + b"\n\n"
                    elif message["type"] == "message":
                        yield b"data: " + message["data"] + b"\n\n"
            finally:
                pubsub.close()

        return Response(
            events(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app
