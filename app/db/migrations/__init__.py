"""Schema migrations, run with Alembic from Runstream's own code (no alembic.ini needed).

``upgrade(engine)`` brings a database to the newest schema; it is what ``runstream db upgrade``
and the server's start-up call. Concurrent upgrades (several server processes starting at once)
are serialized: on PostgreSQL by an advisory lock, on SQLite by taking the write lock up front.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from ..engine import STARTUP_BUSY_TIMEOUT_SECONDS, is_sqlite, writing

SCRIPT_LOCATION = os.path.dirname(os.path.abspath(__file__))
# Any constant will do: it names Runstream's migration lock among the database's advisory locks.
ADVISORY_LOCK_KEY = 0x52756E73


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    # Longer than a request's wait: a server that starts while another migrates waits for it.
    with writing(engine, wait=STARTUP_BUSY_TIMEOUT_SECONDS) as connection:
        if not is_sqlite(engine):
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
