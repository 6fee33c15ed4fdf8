"""templates know their login user

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 06:00:00.000000

`templates.login_user`: the user a VM made from the template logs in as over SSH (its `ssh.user`,
`vmplane vm ssh`), a Unix user name. Rows made before get the one their `os` implies, as a new
template does (domain/login.py): debian, ubuntu and fedora their distribution's default user,
anything else root (vmplane's tiny-linux among them), which is also the column's default for
a row inserted without one. The map is written out here, as it was when this revision was made.
"""

from alembic import op
import sqlalchemy as sa


revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

BY_OS = {'debian': 'debian', 'ubuntu': 'ubuntu', 'fedora': 'fedora', 'tiny-linux': 'root'}


def upgrade() -> None:
    with op.batch_alter_table('templates') as batch:
        batch.add_column(sa.Column('login_user', sa.String(length=32), nullable=False, server_default='root'))
    t = sa.table('templates', sa.column('os', sa.String()), sa.column('login_user', sa.String()))
    for os_, user in BY_OS.items():
        if user != 'root':
            op.execute(t.update().where(t.c.os == os_).values(login_user=user))


def downgrade() -> None:
    with op.batch_alter_table('templates') as batch:
        batch.drop_column('login_user')
