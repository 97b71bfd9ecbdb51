"""The ``runstream`` command."""

from __future__ import annotations

from typing import Any

import click

from . import create_app, migrations
from .auth import is_loopback


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
def serve(host: str, port: int, database_url: str | None, threads: int) -> None:
    """Start the Runstream server."""
    from .server import serve as run_server

    config: dict[str, Any] = {}
    if database_url:
        config["DATABASE_URL"] = database_url
    # Build the app once here: it creates or upgrades the schema (and the secret key) before the
    # server starts, and fails early, in the foreground, on a bad setting.
    app = create_app(config)
    runtime = app.extensions["runstream"]
    if runtime.auth.disabled and not is_loopback_host(host):
        runtime.close()
        raise click.UsageError(
            f"RUNSTREAM_AUTH=disabled lets anyone read and write every stream, so the server "
            f"only listens on loopback then; --host {host} is not a loopback address"
        )
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"Runstream is serving on http://{shown_host}:{port}")
    click.echo(f"  store: {runtime.engine.url.render_as_string(hide_password=True)}")
    if runtime.auth.disabled:
        click.echo("  auth: disabled (loopback clients only)")
    elif runtime.secret_key_file:
        click.echo(f"  secret key: in {runtime.secret_key_file}")
    runtime.close()
    run_server(config, host=host, port=port, threads=threads)


@main.command()
@click.option("--database-url", envvar="RUNSTREAM_DATABASE_URL")
def purge(database_url: str | None) -> None:
    """Delete expired streams; fail runs whose worker vanished; end their streams."""
    from . import maintenance

    app = create_app({"DATABASE_URL": database_url} if database_url else None)
    runtime = app.extensions["runstream"]
    report = maintenance.run_once(runtime)
    runtime.close()
    click.echo(
        f"deleted {report.expired_streams} expired streams, failed {report.lost_runs} runs "
        f"whose worker was lost, closed {report.closed_streams} abandoned streams"
    )


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
    runtime = app.extensions["runstream"]
    revision = migrations.current_revision(runtime.engine)
    click.echo(f"database is at schema revision {revision}")
    runtime.close()
