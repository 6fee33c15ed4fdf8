"""stable VMIDs: a VM's integer id (`vms.seq`, its VMID) and a config version's id are never
reused; usage spans keep what a billing row needs once the VM is gone

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 04:30:00.000000

SQLite hands a rowid key without AUTOINCREMENT the largest id + 1, so deleting the newest VM
gave its id to the next one (Volant's `id`, Blue Lobster's `vmid`, a config version's `id`).
On SQLite `vms` and `vm_configs` are rebuilt with AUTOINCREMENT (batch mode copies the rows,
indexes and constraints from the table's reflection; the copy seeds sqlite_sequence with
max(seq)). PostgreSQL's BIGSERIAL sequences never hand a value out twice: nothing to do.

`vm_usage` gets the VM's uuid, VMID, node, first IPv4 address (address/prefix), template name
and GPU count, filled when a span opens and again when it closes (services/billing.py).
Backfill: spans of VMs that exist take their uuid and VMID; spans of VMs already deleted get a
fresh VMID each (one per VM), taken from the same counter, so none collides with a live one;
their other facts were not kept and stay NULL.
"""

from alembic import op
import sqlalchemy as sa


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

REBUILT = ('vms', 'vm_configs')
"""the tables whose integer key is a public id (VMIDs; Volant's config history ids)"""

COLUMNS = (
    ('vm_uuid', sa.String(length=36)),
    ('vmid', sa.BigInteger()),
    ('node_id', sa.String(length=64)),
    ('ip_address', sa.String(length=64)),
    ('template_name', sa.String(length=255)),
    ('gpu_count', sa.Integer()),
)


def _backfill(bind: sa.engine.Connection) -> None:
    vms = sa.table('vms', sa.column('seq'), sa.column('id'), sa.column('uuid'))
    usage = sa.table('vm_usage', sa.column('vm_id'), sa.column('vm_uuid'), sa.column('vmid'))
    live = {r.id: r for r in bind.execute(sa.select(vms.c.id, vms.c.seq, vms.c.uuid))}
    gone = sorted({r.vm_id for r in bind.execute(sa.select(usage.c.vm_id).distinct())} - set(live))
    for vm_id, r in live.items():
        bind.execute(sa.update(usage).where(usage.c.vm_id == vm_id).values(vm_uuid=r.uuid, vmid=r.seq))
    if not gone:
        return
    if bind.dialect.name == 'sqlite':
        top = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'vms'")).scalar()
        top = max(int(top or 0), max((r.seq for r in live.values()), default=0))
        for n, vm_id in enumerate(gone, start=top + 1):
            bind.execute(sa.update(usage).where(usage.c.vm_id == vm_id).values(vmid=n))
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'vms'"))
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('vms', :n)"), {'n': top + len(gone)})
    else:
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('vms', 'seq')")).scalar_one()
        for vm_id in gone:
            n = bind.execute(sa.text('SELECT nextval(CAST(:s AS regclass))'), {'s': sequence}).scalar_one()
            bind.execute(sa.update(usage).where(usage.c.vm_id == vm_id).values(vmid=n))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        for table in REBUILT:
            with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': True}):
                pass
    with op.batch_alter_table('vm_usage') as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    _backfill(bind)


def downgrade() -> None:
    with op.batch_alter_table('vm_usage') as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
    if op.get_bind().dialect.name == 'sqlite':
        for table in REBUILT:
            with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': False}):
                pass
