"""The schema of the releases before migrations (create_all at commit 939a279).

A database that those releases created is *adopted* at this revision (``migrate.upgrade``
stamps it, after adding ``devices.ek_key_id`` when it predates that column); a new database
is created from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tpm2_attest.service.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("enrolled_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("ek_public", sa.LargeBinary(), nullable=False),
        sa.Column("ek_name", sa.LargeBinary(), nullable=False),
        sa.Column("ek_key_id", sa.LargeBinary(), nullable=True),
        sa.Column("ek_cert_fingerprint", sa.String(64), nullable=True),
        sa.Column("ek_cert_verified", sa.Boolean(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("ak_public_der", sa.LargeBinary(), nullable=False),
        sa.Column("ak_name", sa.LargeBinary(), nullable=False),
        sa.Column("ak_format", sa.String(8), nullable=False),
    )
    op.create_index("ux_devices_active_ek", "devices", ["ek_name"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    op.create_index("ux_devices_active_ek_key", "devices", ["ek_key_id"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("ek_public", sa.LargeBinary(), nullable=False),
        sa.Column("ek_name", sa.LargeBinary(), nullable=False),
        sa.Column("ek_cert_fingerprint", sa.String(64), nullable=True),
        sa.Column("ek_cert_verified", sa.Boolean(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=True),
        sa.Column("ak_public_der", sa.LargeBinary(), nullable=True),
        sa.Column("ak_name", sa.LargeBinary(), nullable=True),
        sa.Column("ak_format", sa.String(8), nullable=True),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("failure", sa.String(64), nullable=True),
    )
    op.create_index("ix_enrollments_ek_name", "enrollments", ["ek_name"])
    op.create_table(
        "attestations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("challenge_id", sa.String(64), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
    )
    op.create_index("ix_attestations_device_id", "attestations", ["device_id"])
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("consumed_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_challenges_device_id", "challenges", ["device_id"])


def downgrade() -> None:
    for table in ("challenges", "attestations", "enrollments", "devices"):
        op.drop_table(table)
