"""events: the persisted event log

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("type", sa.String(48), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("resource", sa.String(64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_events_type", "events", ["type"])
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_events_resource", "events", ["resource"])


def downgrade() -> None:
    op.drop_table("events")
