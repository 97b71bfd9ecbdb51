"""Alembic environment: runs migrations on the connection Runstream hands over."""

from __future__ import annotations

from alembic import context

from runstream.server.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `runstream db upgrade`, which supplies the database")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
context.run_migrations()
