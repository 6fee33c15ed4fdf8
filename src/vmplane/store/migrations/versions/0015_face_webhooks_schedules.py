"""webhook payload formats and what a face records about a schedule

A webhook's `format` says how its deliveries are written: `vmplane` (the native event JSON)
or `hypersdk` (`{event, timestamp, data}` as HyperSDK's daemon posts it). A schedule's
`origin` is what the face that made it recorded (its own id, fields the core does not use).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-22 22:10:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('format', sa.String(length=16), nullable=False, server_default='vmplane'))
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.drop_column('origin')
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.drop_column('format')
