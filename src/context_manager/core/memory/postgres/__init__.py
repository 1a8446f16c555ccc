"""The PostgreSQL backend of memory and persisted conversations (the ``postgres`` extra).

Select it with ``ContextManagerConfig(memory_backend="postgres", postgres_dsn="postgresql://...")``; see
``docs/postgres.md``. Importing this package does not import psycopg (that happens when a backend opens).
"""

from __future__ import annotations

from context_manager.core.memory.postgres.backend import PostgresBackend
from context_manager.core.memory.postgres.database import PostgresDatabase, redact_dsn

__all__ = ["PostgresBackend", "PostgresDatabase", "redact_dsn"]
