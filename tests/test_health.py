"""``/healthz``: 200 while the database answers, 503 when it does not, and a hub that cannot
reach the other processes reported without taking the server out of its balancer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from conftest import ServerProcess, free_port

from runstream.server import create_app, runtime_of


def test_a_serving_server_is_healthy_without_credentials(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/healthz")

    assert response.status_code == 200
    assert response.json() == {"database": "ok", "hub": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_a_database_without_a_free_connection_is_unhealthy(tmp_path: Path) -> None:
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "rs_sk_0123456789",
            "DATABASE_POOL_CONNECTIONS": 1,
            "DATABASE_POOL_TIMEOUT": 0.2,
            "MAINTENANCE_INTERVAL": 3600,
        }
    )
    runtime = runtime_of(app)
    runtime.start_maintenance()  # before the connection is held: its first round may use it
    time.sleep(0.5)
    try:
        with runtime.engine.connect():
            response = app.test_client().get("/healthz")
    finally:
        runtime.close()

    assert response.status_code == 503
    assert "every connection to the database is in use" in response.get_json()["database"]


def test_a_hub_that_cannot_reach_redis_is_reported_and_the_server_stays_in(
    tmp_path: Path,
) -> None:
    app = create_app(
        {
            "INSTANCE_PATH": str(tmp_path),
            "SECRET_KEY": "rs_sk_0123456789",
            "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",  # nothing listens
        }
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            response = app.test_client().get("/healthz")
            if response.get_json()["hub"] != "ok" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        runtime_of(app).close()

    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"
    assert "does not answer" in response.get_json()["hub"]
    assert "hunter2" not in response.get_data(as_text=True)
