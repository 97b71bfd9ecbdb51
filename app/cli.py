"""The ``runstream`` command."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, Any

import click
from flask import Flask
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from . import create_app, runtime_of
from .config import instance_path_from
from .core.errors import RunstreamError
from .db import migrations
from .db.engine import DatabaseUnavailable, is_sqlite, is_sqlite_url
from .runs.auth import SECRET_KEY_FILE, is_loopback
from .runtime import Runtime


class Fatal(click.ClickException):
    """A setting or the machine stops the command: one line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"runstream: {self.format_message()}", err=True, file=file)


def open_app(config: Mapping[str, Any] | None) -> Flask:
    """``create_app(config)``; a store, setting or folder that cannot be used is :class:`Fatal`."""
    try:
        return create_app(config)
    except DatabaseUnavailable as error:
        raise Fatal(str(error)) from error
    except RunstreamError as error:  # the database stayed busy (or read-only) while migrating
        raise Fatal(f"cannot set up the database: {error.message}") from error
    except SQLAlchemyError as error:  # the store opened, but creating the schema failed
        reason = error.orig if isinstance(error, DBAPIError) else error
        raise Fatal(f"cannot set up the database: {' '.join(str(reason).split())}") from error
    except OSError as error:  # the instance folder (its secret key file) cannot be written
        where = f" {error.filename}" if error.filename else ""
        raise Fatal(f"cannot write{where}: {error.strerror or error}") from error
    except ValueError as error:  # a RUNSTREAM_* setting out of range
        raise Fatal(str(error)) from error


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
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Server processes. More than one need PostgreSQL (RUNSTREAM_DATABASE_URL).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Also run a worker in this process and a demo run that streams text live.",
)
def serve(host: str, port: int, database_url: str | None, workers: int, demo: bool) -> None:
    """Start the Runstream server."""
    from .serving import (
        CannotServe,
        address_text,
        listen,
        lock_instance_folder,
        raise_open_file_limit,
        run_patched,
    )
    from .serving import serve as run_server

    run_patched()

    config: dict[str, Any] = {}
    if database_url:
        config["DATABASE_URL"] = database_url
    if demo:
        config["DEMO"] = True  # the dashboard then offers to run the demo again
    instance_path = instance_path_from(config, os.environ)
    try:
        # One server per SQLite instance folder: the lock lasts as long as this process.
        lock = (
            lock_instance_folder(instance_path)
            if not database_url or is_sqlite_url(database_url)
            else None
        )
    except CannotServe as error:
        raise Fatal(str(error)) from None
    # Build the app once here: it creates or upgrades the schema (and the secret key) before the
    # server starts, and fails early, in the foreground, on a bad setting.
    app = open_app(config)
    runtime = runtime_of(app)
    if runtime.auth.disabled and not is_loopback_host(host):
        runtime.close()
        raise click.UsageError(
            f"RUNSTREAM_AUTH=disabled lets anyone read and write every stream, so the server "
            f"only listens on loopback then; --host {host} is not a loopback address"
        )
    problem = workers_problem(runtime) if workers > 1 else None
    if problem:
        runtime.close()
        raise Fatal(f"--workers {workers}: {problem}")
    try:
        listener = listen(host, port)
    except CannotServe as error:
        runtime.close()
        raise Fatal(str(error)) from None
    url = f"http://{address_text(host, listener.getsockname()[1])}"
    click.echo(f"Runstream is serving on {url} (dashboard: {url}/runs)")
    click.echo(f"  instance folder: {app.instance_path}")
    click.echo(f"  store: {runtime.engine.url.render_as_string(hide_password=True)}")
    if runtime.auth.disabled:
        click.echo("  auth: disabled (loopback clients only)")
    elif runtime.secret_key_file:
        click.echo(f"  secret key: in {runtime.secret_key_file}")
    settings = runtime.settings
    click.echo(f"  live readers: up to {settings.max_live_readers} per worker, {workers} worker(s)")
    warning = raise_open_file_limit(settings.max_live_readers)
    if warning:
        click.echo(f"  {warning}")
    runtime.close()
    run_server(
        config,
        listener=listener,
        workers=workers,
        live_readers=settings.max_live_readers,
        header_timeout=settings.header_timeout,
        demo_url=url if demo else None,
        instance_lock=lock,
    )


def workers_problem(runtime: Runtime) -> str | None:
    """Why this server cannot run as several processes, or None if it can."""
    if is_sqlite(runtime.engine):
        return (
            "several server processes need PostgreSQL (RUNSTREAM_DATABASE_URL): SQLite has one "
            "writer at a time, and its writers in other processes would wait on each other"
        )
    # On PostgreSQL the hub always spans processes (Redis, or LISTEN/NOTIFY).
    return None


@main.command()
@click.option("--database-url", envvar="RUNSTREAM_DATABASE_URL")
def purge(database_url: str | None) -> None:
    """Delete expired streams; fail runs whose worker vanished; end their streams."""
    from . import maintenance

    app = open_app({"DATABASE_URL": database_url} if database_url else None)
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
@click.option(
    "--secret-key",
    envvar="RUNSTREAM_SECRET_KEY",
    help="The server's secret key. Default: RUNSTREAM_SECRET_KEY, else the secret_key file "
    "that `runstream serve` keeps in its instance folder, when it is on this machine "
    "($RUNSTREAM_INSTANCE_PATH/secret_key, or instance/secret_key in the working directory).",
)
def worker(
    modules: tuple[str, ...], concurrency: int, api_url: str | None, secret_key: str | None
) -> None:
    """Run the tasks of MODULES: claim queued runs and execute them until SIGTERM."""
    secret_key = secret_key or worker_secret_key()
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


def worker_secret_key() -> str | None:
    """The secret key in the server's instance folder on this machine; without one, stop."""
    if str(os.environ.get("RUNSTREAM_AUTH", "")).strip().lower() == "disabled":
        return None  # a server without authentication needs no key
    key_file = os.path.join(instance_path_from({}, os.environ), SECRET_KEY_FILE)
    try:
        with open(key_file, encoding="utf-8") as file:
            key = file.read().strip()
    except FileNotFoundError:
        key = ""
    except OSError as error:
        raise Fatal(f"cannot read the secret key file {key_file}: {error.strerror}") from None
    if not key:
        raise Fatal(
            "the worker needs the server's secret key: set RUNSTREAM_SECRET_KEY (or pass "
            f"--secret-key) to the key the server keeps in {key_file} (no such file here)"
        )
    click.echo(f"worker: using the secret key in {key_file}")
    return key


def is_loopback_host(host: str) -> bool:
    return host == "localhost" or is_loopback(host)


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command()
@click.option("--database-url", envvar="RUNSTREAM_DATABASE_URL")
def upgrade(database_url: str | None) -> None:
    """Create the schema, or bring it up to date."""
    app = open_app({"DATABASE_URL": database_url} if database_url else None)
    runtime = runtime_of(app)
    revision = migrations.current_revision(runtime.engine)
    click.echo(f"database is at schema revision {revision}")
    runtime.close()
