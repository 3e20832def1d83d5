"""When a spent challenge was first answered again (``challenges.replayed_at``): that replay is
recorded in the device's history, later ones are refused without a record (whoever holds a
spent challenge id could otherwise grow the history at will).

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


def downgrade() -> None:
    with op.batch_alter_table("challenges") as t:
        t.drop_column("replayed_at")
