"""webhook signing secrets and the agent key secret sealed with the data dir's key; cached
idempotent answers that carried a secret forgotten

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 23:30:00.000000

Sealing needs the key (`<data dir>/secrets.key`): the Store hands its SecretBox to Alembic
(`config.attributes["secret_box"]`). A store migrated without one (a bare Store, in tools or
tests) keeps its secrets in clear; WebhookService reads both.
"""

import json

from alembic import context, op
import sqlalchemy as sa


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

AGENT_KEY_SECRET = "agent_key_secret"
"""(services/agents.py) the secret the control plane's keys to agents derive from"""


def _is_hex_secret(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


SECRET_FIELDS = ("key", "ownerKey", "secret", "token", "credential")
"""fields of the answers that carried a secret (API keys, owner keys, webhook secrets, join
tokens and console tokens, node credentials)"""


def upgrade() -> None:
    with op.batch_alter_table('webhooks') as batch:
        batch.alter_column('secret', existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=False)
    conn = op.get_bind()
    box = context.config.attributes.get("secret_box")
    webhooks = sa.table('webhooks', sa.column('id', sa.String), sa.column('secret', sa.Text))
    meta = sa.table('meta', sa.column('key', sa.String), sa.column('value', sa.Text))
    if box is not None:
        for hook_id, secret in conn.execute(sa.select(webhooks.c.id, webhooks.c.secret)).all():
            if secret.startswith("whsec_"):
                sealed = box.seal({"webhookSecret": secret})
                conn.execute(webhooks.update().where(webhooks.c.id == hook_id).values(secret=sealed))
        clear = conn.execute(sa.select(meta.c.value).where(meta.c.key == AGENT_KEY_SECRET)).scalar()
        if clear is not None and _is_hex_secret(clear):
            conn.execute(meta.update().where(meta.c.key == AGENT_KEY_SECRET).values(value=box.seal({"agentKeySecret": clear})))
    keys = sa.table('idempotency_keys', sa.column('caller', sa.String), sa.column('key', sa.String), sa.column('body', sa.Text))
    for caller, key, body in conn.execute(sa.select(keys.c.caller, keys.c.key, keys.c.body)).all():
        try:
            answer = json.loads(body) if body else None
        except ValueError:
            continue
        if isinstance(answer, dict) and any(f in answer for f in SECRET_FIELDS):
            conn.execute(keys.delete().where(keys.c.caller == caller, keys.c.key == key))


def downgrade() -> None:
    conn = op.get_bind()
    box = context.config.attributes.get("secret_box")
    meta = sa.table('meta', sa.column('key', sa.String), sa.column('value', sa.Text))
    sealed = conn.execute(sa.select(meta.c.value).where(meta.c.key == AGENT_KEY_SECRET)).scalar()
    if sealed is not None and not _is_hex_secret(sealed):
        if box is None:
            raise RuntimeError("downgrading below 0018 needs the data dir's secrets.key to unseal the agent key secret")
        conn.execute(meta.update().where(meta.c.key == AGENT_KEY_SECRET).values(value=box.open(sealed)["agentKeySecret"]))
    webhooks = sa.table('webhooks', sa.column('id', sa.String), sa.column('secret', sa.Text))
    for hook_id, secret in conn.execute(sa.select(webhooks.c.id, webhooks.c.secret)).all():
        if not secret.startswith("whsec_"):
            if box is None:
                raise RuntimeError("downgrading below 0018 needs the data dir's secrets.key to unseal webhook secrets")
            conn.execute(webhooks.update().where(webhooks.c.id == hook_id).values(secret=box.open(secret)["webhookSecret"]))
    with op.batch_alter_table('webhooks') as batch:
        batch.alter_column('secret', existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=False)
