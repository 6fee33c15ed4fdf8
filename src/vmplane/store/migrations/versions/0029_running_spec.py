"""a VM records the shape its running process was started with

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07 05:00:00.000000

`vms.running_spec` (JSON, NULL until the VM's next start is recorded): `{cpu, ramMb, diskGb}`
as the hypervisor says the VM's running process got them (`VmRuntime.running`). A resize of a
running VM changes the record at once; where it differs from this, the native VM shows
`pendingRestart` and what is `pending`, until a power-cycle or stop+start applies it.
"""

from alembic import op
import sqlalchemy as sa


revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN, not batch mode, which would rebuild the SQLite table and lose the
    # AUTOINCREMENT of vms.seq (VMIDs handed out again: migration 0023)
    op.add_column('vms', sa.Column('running_spec', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('vms', 'running_spec')  # SQLite 3.35+ drops a column in place
