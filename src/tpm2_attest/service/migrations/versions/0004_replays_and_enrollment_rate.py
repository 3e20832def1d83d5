"""Limits on what unauthenticated requests can make the service store:

* when a spent challenge was first answered again (``challenges.replayed_at``): that replay is
  recorded in the device's history, later ones are refused without a record (whoever holds a
  spent challenge id could otherwise grow the history at will);
* the EK key of each enrollment (``enrollments.ek_key_id``, indexed with ``created_at``): the
  enrollments one EK may begin are rate limited like a device's challenges (NULL for the
  enrollments of earlier releases, which have expired by the time this runs).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tpm2_attest.service.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("challenges", sa.Column("replayed_at", UtcDateTime(), nullable=True))
    op.add_column("enrollments", sa.Column("ek_key_id", sa.LargeBinary(), nullable=True))
    op.create_index("ix_enrollments_ek_key_created", "enrollments", ["ek_key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_enrollments_ek_key_created", "enrollments")
    with op.batch_alter_table("enrollments") as t:
        t.drop_column("ek_key_id")
    with op.batch_alter_table("challenges") as t:
        t.drop_column("replayed_at")
