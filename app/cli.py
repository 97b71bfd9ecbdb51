"""The ``runstream`` command."""

from __future__ import annotations

from typing import Any

import click

from . import create_app, migrations


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
    # Build the app once here: it creates or upgrades the schema before the server starts, and
    # fails early, in the foreground, on a bad setting.
    app = create_app(config)
    runtime = app.extensions["runstream"]
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"Runstream is serving on http://{shown_host}:{port}")
    click.echo(f"  store: {runtime.engine.url.render_as_string(hide_password=True)}")
    runtime.close()
    run_server(config, host=host, port=port, threads=threads)


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
