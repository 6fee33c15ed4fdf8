"""imports (a VM brought in from an OVA, a disk image, vSphere or another vmplane) and
vSphere connection profiles (credentials encrypted with the data dir's key)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-22 22:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imports',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('vm_id', sa.String(length=64), nullable=True),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('source_type', sa.String(length=16), nullable=False),
    sa.Column('source', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=True),
    sa.Column('bytes_done', sa.BigInteger(), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=True),
    sa.Column('shape', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    op.create_index('ix_imports_org_id', 'imports', ['org_id'], unique=False)
    op.create_index('ix_imports_job_id', 'imports', ['job_id'], unique=False)
    op.create_table('vsphere_profiles',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('insecure', sa.Boolean(), nullable=False),
    sa.Column('secret', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id'),
    sa.UniqueConstraint('org_id', 'name', name='uq_vsphere_profiles_org_name')
    )


def downgrade() -> None:
    op.drop_table('vsphere_profiles')
    op.drop_index('ix_imports_job_id', table_name='imports')
    op.drop_index('ix_imports_org_id', table_name='imports')
    op.drop_table('imports')
