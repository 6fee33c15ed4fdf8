"""cursor ids: an event's id (SSE `id:`, `Last-Event-ID`, the webhook delivery cursor) and an
audit record's id are never reused

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 05:05:00.000000

Retention deletes events older than a cutoff and audit records older than theirs; after an idle
spell that empties the table, and SQLite (a rowid key without AUTOINCREMENT) handed the next row
id 1 again: SSE followers resuming with a higher `Last-Event-ID` skipped the new events, and the
webhook delivery cursor, above every new id, delivered nothing more. On SQLite both tables are
rebuilt with AUTOINCREMENT (batch mode copies rows and indexes; the copy seeds sqlite_sequence
with max(seq)), and the sequence is raised to the webhook cursor where that is higher (the log
was already emptied once). PostgreSQL's BIGSERIAL sequences never hand a value out twice.
"""

from alembic import op
import sqlalchemy as sa


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

REBUILT = ('events', 'audit_log')


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        return
    for table in REBUILT:
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': True}):
            pass
    cursor = bind.execute(sa.text("SELECT value FROM meta WHERE key = 'webhooks_cursor'")).scalar()
    top = bind.execute(sa.text("SELECT coalesce(max(seq), 0) FROM events")).scalar_one()
    floor = max(int(top), int(cursor or 0))
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'events'"))
    bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', :n)"), {'n': floor})


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for table in REBUILT:
            with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': False}):
                pass
