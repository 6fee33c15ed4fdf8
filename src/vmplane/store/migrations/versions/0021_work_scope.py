"""the scope of work done for a credential: jobs, tasks and events carry their team;
schedules, webhooks and deployments the scope of the credential that made them

Revision ID: 0021
Revises: 0019
Create Date: 2026-12-06 23:40:00.000000

Backfill: a task's team is its VM's (or snapshot's, or backup's); a job's is its tasks' team
when they all share one; an event's is its resource's (a VM, snapshot, backup, job or task's
resource). Existing schedules and webhooks keep acting as their owner's organization-wide
membership (credential NULL: as a JWT-made one does, see services/scopes.py); webhooks get
their owner from `created_by` where that names a member of the organization.
"""

from alembic import op
import sqlalchemy as sa


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def _scope_columns(batch: object, owner: bool = False, team: bool = True) -> None:
    if owner:
        batch.add_column(sa.Column('owner_id', sa.String(length=64), nullable=True))  # type: ignore[attr-defined]
    batch.add_column(sa.Column('credential', sa.String(length=64), nullable=True))  # type: ignore[attr-defined]
    if team:
        batch.add_column(sa.Column('team_id', sa.String(length=64), nullable=True))  # type: ignore[attr-defined]
    batch.add_column(sa.Column('read_only', sa.Boolean(), nullable=False, server_default=sa.false()))  # type: ignore[attr-defined]
    batch.add_column(sa.Column('disabled_reason', sa.Text(), nullable=True))  # type: ignore[attr-defined]


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('team_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('team_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('team_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('webhooks') as batch:
        _scope_columns(batch, owner=True)
    with op.batch_alter_table('schedules') as batch:
        _scope_columns(batch)
    with op.batch_alter_table('deployments') as batch:
        _scope_columns(batch, team=False)
    for table in ('vms', 'snapshots', 'backups'):
        op.execute(
            f"UPDATE tasks SET team_id = (SELECT {table}.team_id FROM {table} WHERE {table}.id = tasks.resource_id)"
            f" WHERE team_id IS NULL AND EXISTS (SELECT 1 FROM {table} WHERE {table}.id = tasks.resource_id)"
        )
    op.execute(
        "UPDATE jobs SET team_id = (SELECT MIN(tasks.team_id) FROM tasks WHERE tasks.job_id = jobs.id)"
        " WHERE (SELECT COUNT(DISTINCT COALESCE(tasks.team_id, '')) FROM tasks WHERE tasks.job_id = jobs.id) = 1"
    )
    for table in ('vms', 'snapshots', 'backups', 'jobs'):
        op.execute(
            f"UPDATE events SET team_id = (SELECT {table}.team_id FROM {table} WHERE {table}.id = events.resource)"
            f" WHERE team_id IS NULL AND EXISTS (SELECT 1 FROM {table} WHERE {table}.id = events.resource)"
        )
    op.execute(
        "UPDATE webhooks SET owner_id = (SELECT users.id FROM users JOIN memberships ON memberships.user_id = users.id"
        " WHERE users.name = webhooks.created_by AND memberships.org_id = webhooks.org_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        for c in ('disabled_reason', 'read_only', 'credential'):
            batch.drop_column(c)
    for table, cols in (('schedules', ('disabled_reason', 'read_only', 'team_id', 'credential')),
                        ('webhooks', ('disabled_reason', 'read_only', 'team_id', 'credential', 'owner_id'))):
        with op.batch_alter_table(table) as batch:
            for c in cols:
                batch.drop_column(c)
    for table in ('events', 'tasks', 'jobs'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('team_id')
