"""Alembic environment: `lanecount-backoffice migrate` hands over an open connection (backoffice/db.py)."""

from __future__ import annotations

from alembic import context

from backoffice.tables import metadata
from backoffice.web.tables import metadata as web_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `lanecount-backoffice migrate --db URL`")
context.configure(connection=connection, target_metadata=[metadata, web_metadata], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
