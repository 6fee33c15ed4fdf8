"""node agents: join tokens, node credentials, agent addresses, cordons

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('node_tokens',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=256), nullable=False),
    sa.Column('one_time', sa.Boolean(), nullable=False),
    sa.Column('uses', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('last_used_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_url', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('credential_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('credential_digest', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('capabilities', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('cordoned', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('cordoned')
        batch_op.drop_column('capabilities')
        batch_op.drop_column('credential_digest')
        batch_op.drop_column('credential_id')
        batch_op.drop_column('agent_url')
    op.drop_table('node_tokens')
