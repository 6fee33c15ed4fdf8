"""stored stats samples of VMs and nodes, for history graphs

Revision ID: 0031
Revises: 0029
Create Date: 2026-12-07 07:30:00.000000

`vm_samples`: what the stats path said of each running VM every `stats_sample_seconds`
(CPU %, memory, the disk and network byte counters); `node_samples`: each node's claimed
vCPUs/RAM and, for a node on the control plane's own host, the host's CPU and memory use.
Both are pruned past `stats_retention_seconds` by the sampler (services/stats_history.py);
rows are found by (id, at) and pruned by `at`.
"""

from alembic import op
import sqlalchemy as sa


revision = '0031'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'vm_samples',
        sa.Column('vm_id', sa.String(64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('node_id', sa.String(64), nullable=False),
        sa.Column('cpu_percent', sa.Float(), nullable=False),
        sa.Column('memory_mb', sa.Integer(), nullable=False),
        sa.Column('memory_total_mb', sa.Integer(), nullable=False),
        sa.Column('memory_source', sa.String(16), nullable=True),
        sa.Column('disk_read_bytes', sa.BigInteger(), nullable=False),
        sa.Column('disk_write_bytes', sa.BigInteger(), nullable=False),
        sa.Column('net_rx_bytes', sa.BigInteger(), nullable=False),
        sa.Column('net_tx_bytes', sa.BigInteger(), nullable=False),
    )
    op.create_index('ix_vm_samples_vm_at', 'vm_samples', ['vm_id', 'at'])
    op.create_index('ix_vm_samples_at', 'vm_samples', ['at'])
    op.create_table(
        'node_samples',
        sa.Column('node_id', sa.String(64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('cpu_used', sa.Integer(), nullable=False),
        sa.Column('cpu_total', sa.Integer(), nullable=False),
        sa.Column('ram_mb_used', sa.BigInteger(), nullable=False),
        sa.Column('ram_mb_total', sa.BigInteger(), nullable=False),
        sa.Column('host_cpu_percent', sa.Float(), nullable=True),
        sa.Column('host_memory_percent', sa.Float(), nullable=True),
    )
    op.create_index('ix_node_samples_node_at', 'node_samples', ['node_id', 'at'])
    op.create_index('ix_node_samples_at', 'node_samples', ['at'])


def downgrade() -> None:
    op.drop_table('node_samples')
    op.drop_table('vm_samples')
