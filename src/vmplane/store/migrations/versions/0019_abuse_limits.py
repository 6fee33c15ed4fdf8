"""failed authentications audited in aggregate (audit_log.count), one-time WebSocket tickets

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 22:50:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_log') as batch:
        batch.add_column(sa.Column('count', sa.Integer(), nullable=False, server_default='1'))
    op.create_table('ws_tickets',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('credential', sa.String(length=64), nullable=True),
    sa.Column('team_id', sa.String(length=64), nullable=True),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('token_hash')
    )
    op.create_index(op.f('ix_ws_tickets_expires_at'), 'ws_tickets', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_ws_tickets_expires_at'), table_name='ws_tickets')
    op.drop_table('ws_tickets')
    with op.batch_alter_table('audit_log') as batch:
        batch.drop_column('count')
