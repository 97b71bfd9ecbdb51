"""The ``runstream`` command."""

from __future__ import annotations

import os
from typing import Any

import click

from . import create_app, runtime_of
from .db import migrations
from .runs.auth import is_loopback


@click.group()
@click.version_option(package_name="runstream")
def main() -> None:
    """Runstream: durable, resumable realtime streams."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--database-url",
    envvar="RUNSTREAM_DATABASE_URL",
    help="SQLAlchemy URL of the store. Default: an SQLite file in the instance folder.",
)
@click.option(
    "--threads",
    default=128,
    show_default=True,
    type=click.IntRange(1),
    help="Requests served at once; every live reader holds one.",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Also run a worker in this process and a demo run that streams text live.",
)
def serve(host: str, port: int, database_url: str | None, threads: int, demo: bool) -> None:
    """Start the Runstream server."""
    from .serving import serve as run_server

    config: dict[str, Any] = {}
    if database_url:
        config["DATABASE_URL"] = database_url
    # Build the app once here: it creates or upgrades the schema (and the secret key) before the
    # server starts, and fails early, in the foreground, on a bad setting.
    app = create_app(config)
    runtime = runtime_of(app)
    if runtime.auth.disabled and not is_loopback_host(host):
        runtime.close()
        raise click.UsageError(
            f"RUNSTREAM_AUTH=disabled lets anyone read and write every stream, so the server "
            f"only listens on loopback then; --host {host} is not a loopback address"
        )
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    click.echo(f"Runstream is serving on {url} (dashboard: {url}/runs)")
    click.echo(f"  store: {runtime.engine.url.render_as_string(hide_password=True)}")
    if runtime.auth.disabled:
        click.echo("  auth: disabled (loopback clients only)")
    elif runtime.secret_key_file:
        click.echo(f"  secret key: in {runtime.secret_key_file}")
    runtime.close()
    run_server(config, host=host, port=port, threads=threads, demo_url=url if demo else None)


@main.command()
@click.option("--database-url", envvar="RUNSTREAM_DATABASE_URL")
def purge(database_url: str | None) -> None:
    """Delete expired streams; fail runs whose worker vanished; end their streams."""
    from . import maintenance

    app = create_app({"DATABASE_URL": database_url} if database_url else None)
    runtime = runtime_of(app)
    report = maintenance.run_once(runtime)
    runtime.close()
    click.echo(
        f"deleted {report.expired_streams} expired streams, failed {report.lost_runs} runs "
        f"whose worker was lost, closed {report.closed_streams} abandoned streams"
    )


@main.command()
@click.option(
    "--tasks",
    "modules",
    multiple=True,
    required=True,
    help="Module that declares tasks with @task, such as myapp.tasks; may be repeated.",
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1))
@click.option("--api-url", envvar="RUNSTREAM_API_URL", help="Default: http://127.0.0.1:8787")
@click.option("--secret-key", envvar="RUNSTREAM_SECRET_KEY", help="Default: RUNSTREAM_SECRET_KEY")
def worker(
    modules: tuple[str, ...], concurrency: int, api_url: str | None, secret_key: str | None
) -> None:
    """Run the tasks of MODULES: claim queued runs and execute them until SIGTERM."""
    import asyncio
    import importlib
    import logging
    import signal
    import sys

    from runstream import Worker, configure
    from runstream.tasks import registered

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too many
    sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise click.UsageError(f"cannot import {module}: {error}") from error
    tasks = registered()
    if not tasks:
        raise click.UsageError(f"{', '.join(modules)} declares no task: decorate one with @task")
    configure(api_url=api_url, secret_key=secret_key)

    async def serve_tasks() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await Worker(tasks, concurrency=concurrency).run(stop)

    click.echo(f"worker: running {', '.join(sorted(tasks))} ({concurrency} at a time)")
    asyncio.run(serve_tasks())


def is_loopback_host(host: str) -> bool:
    return host == "localhost" or is_loopback(host)


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command()
@click.option("--database-url", envvar="RUNSTREAM_DATABASE_URL")
def upgrade(database_url: str | None) -> None:
    """Create the schema, or bring it up to date."""
    app = create_app({"DATABASE_URL": database_url} if database_url else None)
    runtime = runtime_of(app)
    revision = migrations.current_revision(runtime.engine)
    click.echo(f"database is at schema revision {revision}")
    runtime.close()
