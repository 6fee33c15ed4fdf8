"""host_ports (forwarded ports) and console_tokens (one-time console access)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_ports",
        sa.Column("node_scope", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("node_scope", "port", "protocol"),
    )
    op.create_index("ix_host_ports_vm_id", "host_ports", ["vm_id"])
    op.create_table(
        "console_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_console_tokens_expires_at", "console_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("console_tokens")
    op.drop_table("host_ports")
