"""display names: snapshot names are display text of up to 64 characters; usage spans keep
the VM's display name

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 05:25:00.000000

A snapshot's name reaches no path or command line (the node names the image by the snapshot's
id), so it follows the rule of a VM's display name (domain/names.py): 1 to 64 printable
characters, FastVM's `maxLength: 64`. The column was 63 wide, which PostgreSQL enforced.

A usage span keeps its VM's display name (`display_name`, where the client gave one other than
the name) beside `vm_name`, both written again when the span closes, so a billing row shows the
name the client last gave the VM, after a rename and after the VM is gone.
"""

from alembic import op
import sqlalchemy as sa


revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('snapshots') as batch:
        batch.alter_column('name', existing_type=sa.String(length=63), type_=sa.String(length=64), existing_nullable=False)
    with op.batch_alter_table('vm_usage') as batch:
        batch.add_column(sa.Column('display_name', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('vm_usage') as batch:
        batch.drop_column('display_name')
    with op.batch_alter_table('snapshots') as batch:
        batch.alter_column('name', existing_type=sa.String(length=64), type_=sa.String(length=63), existing_nullable=False)
