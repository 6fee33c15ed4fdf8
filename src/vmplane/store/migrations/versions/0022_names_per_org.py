"""names per organization: VM, template, network, deployment and plugin names (and plugin
runtimes) are unique within an organization, or among the shared ones (org_id NULL), no longer
across the installation; plugins refer to a template of their own owner by id

Revision ID: 0022
Revises: 0019
Create Date: 2026-12-06 23:30:00.000000
"""

import json
from typing import cast

from alembic import op
import sqlalchemy as sa


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

# the global unique constraints to drop, and what replaces each table's
GLOBAL = {'vms': ['name'], 'templates': ['name'], 'networks': ['name'], 'deployments': ['name'], 'plugins': ['name', 'runtime']}
PER_ORG = [('vms', 'uq_vms_org_name', 'name'), ('deployments', 'uq_deployments_org_name', 'name')]
"""org_id NOT NULL: a plain unique constraint"""
PER_NAMESPACE = [
    ('templates', 'templates_org_name', 'name'),
    ('networks', 'networks_org_name', 'name'),
    ('plugins', 'plugins_org_name', 'name'),
    ('plugins', 'plugins_org_runtime', 'runtime'),
]
"""org_id NULL is the shared namespace: NULLs are distinct in a unique index, so each of these
is two: uq_<x> on (org_id, col), and uq_<x>_shared on (col) WHERE org_id IS NULL. Partial
indexes, not an expression index (coalesce): SQLite's batch migrations rebuild a table from
its reflection, which keeps partial indexes and silently drops expression ones."""
SHARED = sa.text('org_id IS NULL')
# names SQLite's unnamed UNIQUE (col) clauses so that batch mode can drop them
NAMING = {'uq': 'uq_%(table_name)s_%(column_0_name)s'}


def _drop_global(bind: sa.engine.Connection) -> None:
    for table, cols in GLOBAL.items():
        if bind.dialect.name == 'sqlite':
            with op.batch_alter_table(table, naming_convention=NAMING) as batch:
                for col in cols:
                    batch.drop_constraint(f'uq_{table}_{col}', type_='unique')
        else:
            for uc in sa.inspect(bind).get_unique_constraints(table):
                if uc['column_names'] in [[c] for c in cols]:
                    op.drop_constraint(cast(str, uc['name']), table, type_='unique')  # PostgreSQL names every constraint


def _plugin_templates(bind: sa.engine.Connection) -> None:
    """Each plugin's template_id becomes the id of a template of the plugin's owner whose
    checksum is the manifest's sha256: a name is turned into the id of that name in the
    plugin's namespace; a template of someone else, or with another checksum, is replaced by
    a ready one of the owner's that matches, if there is one (otherwise the reference stays
    and the plugin's VMs are refused until it is reinstalled: services/plugins.py)."""
    plugins = sa.table('plugins', sa.column('seq'), sa.column('org_id'), sa.column('manifest'), sa.column('template_id'))
    templates = sa.table(
        'templates', sa.column('seq'), sa.column('id'), sa.column('name'), sa.column('org_id'), sa.column('checksum'), sa.column('status')
    )

    def same_owner(org_id: str | None) -> sa.ColumnElement[bool]:
        return templates.c.org_id.is_(None) if org_id is None else templates.c.org_id == org_id

    for p in bind.execute(sa.select(plugins).where(plugins.c.template_id.is_not(None))).all():
        manifest = p.manifest if isinstance(p.manifest, dict) else json.loads(p.manifest)
        image = manifest.get('rootfs') or manifest.get('initramfs') or {}
        expected = 'sha256:' + str(image.get('checksum', '')).split(':', 1)[-1].lower()
        tpl = bind.execute(sa.select(templates).where(templates.c.id == p.template_id)).first()
        if tpl is None:
            tpl = bind.execute(sa.select(templates).where(templates.c.name == p.template_id, same_owner(p.org_id))).first()
        if tpl is None or tpl.org_id != p.org_id or tpl.checksum not in (None, expected):
            match = bind.execute(
                sa.select(templates).where(same_owner(p.org_id), templates.c.checksum == expected, templates.c.status == 'ready')
                .order_by(templates.c.seq).limit(1)
            ).first()  # fmt: skip
            tpl = match or tpl
        if tpl is not None and tpl.id != p.template_id:
            bind.execute(sa.update(plugins).where(plugins.c.seq == p.seq).values(template_id=tpl.id))


def upgrade() -> None:
    bind = op.get_bind()
    _drop_global(bind)
    for table, name, col in PER_ORG:
        with op.batch_alter_table(table) as batch:
            batch.create_unique_constraint(name, ['org_id', col])
    for table, name, col in PER_NAMESPACE:
        op.create_index(f'uq_{name}', table, ['org_id', col], unique=True)
        op.create_index(f'uq_{name.replace("_org_", "_shared_")}', table, [col], unique=True, sqlite_where=SHARED, postgresql_where=SHARED)
    _plugin_templates(bind)


def downgrade() -> None:
    """Fails where two organizations now hold the same name (as it must: the old schema
    cannot hold both)."""
    for table, name, _col in reversed(PER_NAMESPACE):
        op.drop_index(f'uq_{name.replace("_org_", "_shared_")}', table_name=table)
        op.drop_index(f'uq_{name}', table_name=table)
    for table, name, _col in reversed(PER_ORG):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_='unique')
    for table, cols in GLOBAL.items():
        with op.batch_alter_table(table) as batch:
            for col in cols:
                batch.create_unique_constraint(f'uq_{table}_{col}', [col])
