"""snapshot uuids

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 19:22:18.722134
"""

import uuid

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Snapshots get a uuid (faces that name resources by uuid) and keep their VM's uuid (the
    # VM may be deleted before its snapshots). Existing snapshots get theirs here.
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uuid', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('vm_uuid', sa.String(length=36), nullable=True))
    conn = op.get_bind()
    snapshots = sa.table('snapshots', sa.column('id', sa.String), sa.column('vm_id', sa.String), sa.column('uuid', sa.String), sa.column('vm_uuid', sa.String))
    vms = sa.table('vms', sa.column('id', sa.String), sa.column('uuid', sa.String))
    vm_uuids = dict(conn.execute(sa.select(vms.c.id, vms.c.uuid)).all())
    for snap_id, vm_id in conn.execute(sa.select(snapshots.c.id, snapshots.c.vm_id)).all():
        conn.execute(
            snapshots.update().where(snapshots.c.id == snap_id).values(uuid=str(uuid.uuid4()), vm_uuid=vm_uuids.get(vm_id))
        )
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.alter_column('uuid', existing_type=sa.String(length=36), nullable=False)
        batch_op.create_unique_constraint('uq_snapshots_uuid', ['uuid'])


def downgrade() -> None:
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_constraint('uq_snapshots_uuid', type_='unique')
        batch_op.drop_column('vm_uuid')
        batch_op.drop_column('uuid')
