"""The database: the engine and its transactions (:mod:`.engine`), the schema (:mod:`.models`)
and its migrations (:mod:`.migrations`)."""

from .engine import is_sqlite, make_engine, reading, writing

__all__ = ["is_sqlite", "make_engine", "reading", "writing"]
