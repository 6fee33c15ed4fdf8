"""webhook deliveries know their event's resource, so each resource's are sent in order

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-07 18:10:00.000000

`webhook_deliveries.resource`: the resource of the delivery's event (NULL for rows queued before
this revision and for events without one). A delivery is claimed only when no delivery of the
same webhook and resource for an earlier event is still pending or in flight
(services/webhook_delivery.py); the index serves that look-up.
"""

from alembic import op
import sqlalchemy as sa


revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("resource", sa.String(64), nullable=True))
    op.create_index("ix_deliveries_resource", "webhook_deliveries", ["webhook_id", "resource", "event_seq"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_resource", "webhook_deliveries")
    op.drop_column("webhook_deliveries", "resource")
