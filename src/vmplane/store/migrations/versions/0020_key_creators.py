"""who made each API key (its creator's user and key), the creator of the credential each
audited request used, and whose stream slot a console token's console takes

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:40:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('created_by_user', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('created_by_key', sa.String(length=64), nullable=True))
    with op.batch_alter_table('audit_log') as batch:
        batch.add_column(sa.Column('creator_user', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('creator_key', sa.String(length=64), nullable=True))
    with op.batch_alter_table('console_tokens') as batch:
        batch.add_column(sa.Column('holder', sa.String(length=160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('console_tokens') as batch:
        batch.drop_column('holder')
    with op.batch_alter_table('audit_log') as batch:
        batch.drop_column('creator_key')
        batch.drop_column('creator_user')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('created_by_key')
        batch.drop_column('created_by_user')
