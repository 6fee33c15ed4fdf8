"""a job records where its request came from

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 05:00:00.000000

`jobs.origin` (JSON, NULL for vmplane's own work and for jobs made before): the prefix of the
API key and the client address of the request that made the job (auth.origin), shown as the
native job's `keyPrefix`/`clientIp` and Blue Lobster's `auth_token_partial`/`client_ip`. Kept
on the job, once, not in every task's payload, which handlers read as their arguments.
"""

from alembic import op
import sqlalchemy as sa


revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('origin', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('origin')
