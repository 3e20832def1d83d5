"""Operating the service: how a device enrolled (``enrolled_by``, added outside migrations by
the release that introduced enrollment by AK certificate: added here when missing), device status, policies in the database, operator tokens, audit log,
per-attestation policy verdicts and machine state, indexes for sweeping and rate limits.

Existing devices start ``stale`` (``revoked`` when revoked) with their last attestation times
filled in from their history; they become ``trusted`` at their next passing attestation.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tpm2_attest.service.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


class _adding:
    """``with _adding(table) as t: t.add_column(...)`` as plain ALTER TABLE ADD COLUMN."""

    def __init__(self, table: str) -> None:
        self.table = table

    def __enter__(self) -> _adding:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_column(self, column: sa.Column[object]) -> None:
        op.add_column(self.table, column)


def upgrade() -> None:
    # A database of the releases between 0001 and migrations may have enrolled_by already.
    if "enrolled_by" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("devices")}:
        op.add_column("devices", sa.Column("enrolled_by", sa.String(24), nullable=False,
                                           server_default="credential_activation"))
    # Plain ADD COLUMN (SQLite does it in place; batch mode would copy the table).
    with _adding("devices") as t:
        t.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="stale"))
        t.add_column(sa.Column("status_since", UtcDateTime(), nullable=True))
        t.add_column(sa.Column("last_attestation_at", UtcDateTime(), nullable=True))
        t.add_column(sa.Column("last_attestation_id", sa.Integer(), nullable=True))
        t.add_column(sa.Column("last_ok_at", UtcDateTime(), nullable=True))
        t.add_column(sa.Column("fresh_until", UtcDateTime(), nullable=True))
        t.add_column(sa.Column("freshness", sa.Float(), nullable=True))
        t.add_column(sa.Column("reenroll_allowed", sa.Boolean(), nullable=False,
                               server_default=sa.text("false")))
        t.add_column(sa.Column("replaced_by", sa.String(64), nullable=True))
        t.add_column(sa.Column("ima_offset", sa.Integer(), nullable=True))
    op.create_index("ix_devices_status", "devices", ["status"])
    op.create_index("ix_devices_enrolled", "devices", ["enrolled_at", "id"])
    op.execute("UPDATE devices SET status = 'revoked', status_since = revoked_at WHERE revoked_at IS NOT NULL")
    op.execute("UPDATE devices SET status_since = enrolled_at WHERE status_since IS NULL")
    op.execute("UPDATE devices SET "
               "last_attestation_id = (SELECT max(a.id) FROM attestations a WHERE a.device_id = devices.id), "
               "last_ok_at = (SELECT max(a.at) FROM attestations a WHERE a.device_id = devices.id AND a.ok)")
    op.execute("UPDATE devices SET last_attestation_at = "
               "(SELECT a.at FROM attestations a WHERE a.id = devices.last_attestation_id)")

    with _adding("attestations") as t:
        t.add_column(sa.Column("policies", sa.JSON(), nullable=True))
        t.add_column(sa.Column("violations", sa.JSON(), nullable=True))
        t.add_column(sa.Column("state", sa.JSON(), nullable=True))
    op.create_index("ix_challenges_expires_at", "challenges", ["expires_at"])
    op.create_index("ix_challenges_device_created", "challenges", ["device_id", "created_at"])
    op.create_index("ix_enrollments_expires_at", "enrollments", ["expires_at"])

    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_device_tags_tag", "device_tags", ["tag"])
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("freshness", sa.Float(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_policies_name_version"),
    )
    op.create_table(
        "policy_assignments",
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("policy_name", sa.String(64), nullable=False),
        sa.Column("assigned_at", UtcDateTime(), nullable=False),
        sa.Column("assigned_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_policy_assignments_policy_name", "policy_assignments", ["policy_name"])


def downgrade() -> None:
    for table in ("policy_assignments", "policies", "device_tags", "audit_log", "tokens"):
        op.drop_table(table)
    op.drop_index("ix_enrollments_expires_at", "enrollments")
    op.drop_index("ix_challenges_device_created", "challenges")
    op.drop_index("ix_challenges_expires_at", "challenges")
    with op.batch_alter_table("attestations") as t:
        for col in ("state", "violations", "policies"):
            t.drop_column(col)
    op.drop_index("ix_devices_enrolled", "devices")
    op.drop_index("ix_devices_status", "devices")
    with op.batch_alter_table("devices") as t:
        for col in ("ima_offset", "enrolled_by", "replaced_by", "reenroll_allowed", "freshness", "fresh_until", "last_ok_at",
                    "last_attestation_id", "last_attestation_at", "status_since", "status"):
            t.drop_column(col)
