"""Alembic migrations of the service's schema, shipped as package data (``tpm2-attest db upgrade``)."""
