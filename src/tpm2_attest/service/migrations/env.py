"""Alembic's environment for the service: always run on a connection the caller opened
(``tpm2_attest.service.migrate``), never from an ini file or a URL of its own."""

from __future__ import annotations

from alembic import context

from tpm2_attest.service.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only migrate.py drives these migrations
    raise RuntimeError("run migrations with 'tpm2-attest db upgrade' (tpm2_attest.service.migrate)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
