"""the ISO library, and the ISO in a VM's CD-ROM

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-07 15:10:00.000000

`isos`: installer and live CD images (ISO 9660) an organization uploaded or had fetched, or
(org_id NULL) the operators' ones, shared with every organization; the file is
`<data dir>/isos/<id>.iso` once `status` is `ready` (services/isos.py, jobs/handlers/iso_import.py).
`vms.cdrom_iso_id`: the ISO in the VM's CD-ROM (NULL: empty), indexed so that deleting an ISO
finds the VMs that hold it.
"""

from alembic import op
import sqlalchemy as sa


revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "isos",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_isos_org_id", "isos", ["org_id"])
    op.create_index("uq_isos_org_name", "isos", ["org_id", "name"], unique=True)
    op.create_index(
        "uq_isos_shared_name",
        "isos",
        ["name"],
        unique=True,
        sqlite_where=sa.text("org_id IS NULL"),
        postgresql_where=sa.text("org_id IS NULL"),
    )
    # a plain ADD COLUMN, not batch mode (which would lose the AUTOINCREMENT of vms.seq: 0029)
    op.add_column("vms", sa.Column("cdrom_iso_id", sa.String(64), nullable=True))
    op.create_index("ix_vms_cdrom_iso_id", "vms", ["cdrom_iso_id"])


def downgrade() -> None:
    op.drop_index("ix_vms_cdrom_iso_id", "vms")
    op.drop_column("vms", "cdrom_iso_id")
    op.drop_table("isos")
