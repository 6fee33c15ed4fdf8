"""a VM records whether its guest said it is ready

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 05:30:00.000000

`vms.guest_ready` (boolean, false for every VM there was): true once the guest of a running VM
is ready in its current boot (its agent answers and cloud-init is done; a guest with no agent:
its first console output), set with the `vm.guest_ready` event; every status change other
than to `running` makes it false again (store/vms.set_status).
"""

from alembic import op
import sqlalchemy as sa


revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN, not batch mode: batch mode rebuilds the SQLite table, and the copy
    # loses the AUTOINCREMENT of vms.seq (VMIDs would be handed out again: migration 0023)
    op.add_column('vms', sa.Column('guest_ready', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('vms', 'guest_ready')  # SQLite 3.35+ drops a column in place
