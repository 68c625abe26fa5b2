"""Alembic environment: ioussl always hands over an open connection inside its write lock.

``ioussl db upgrade`` (``registry/migrate.py``) takes the registry's write lock, backs up a SQLite file,
and runs the revisions on that very connection, in its one transaction (SQLite and PostgreSQL both have
transactional DDL), so an upgrade either completes or leaves the registry as it was.
"""

from __future__ import annotations

from alembic import context

from ioussl.registry.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `ioussl db upgrade`, which passes the connection")
context.configure(connection=connection, target_metadata=Base.metadata, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
