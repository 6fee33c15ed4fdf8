"""SQL for templates."""

from typing import Any

from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import Template
from ..domain.login import default_login_user
from .tables import templates

UPLOAD_SUFFIX = ".upload"
"""an uploaded image waiting for its template-create job: `<images dir>/<template id>.upload`
(services/templates.py writes it, jobs/handlers/template_import.py takes it in)"""


def _one(row: Any) -> Template | None:
    return Template.from_row(row) if row is not None else None


def in_namespace(org_id: str | None) -> ColumnElement[bool]:
    """Templates of one namespace: an organization's, or the shared ones (org_id None)."""
    return templates.c.org_id.is_(None) if org_id is None else templates.c.org_id == org_id


async def insert_template(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Insert a template; without a `login_user`, the one its `os` implies."""
    await conn.execute(insert(templates), [{"login_user": default_login_user(row.get("os")), **row}])


async def get_template(conn: AsyncConnection, template_id: str) -> Template | None:
    """A template by id, whoever owns it (the caller checks who may see it)."""
    return _one((await conn.execute(select(templates).where(templates.c.id == template_id))).first())


async def find_template(conn: AsyncConnection, ref: str, org_id: str | None) -> Template | None:
    """The template `ref` (id or name) as organization `org_id` sees it: its own and the
    shared ones only; a name is looked up among its own first, then the shared ones, so a
    name another organization holds is never found. org_id None: the shared ones only."""
    visible = or_(templates.c.org_id.is_(None), templates.c.org_id == org_id) if org_id is not None else templates.c.org_id.is_(None)
    q = (
        select(templates)
        .where(visible, or_(templates.c.id == ref, templates.c.name == ref))
        .order_by((templates.c.id != ref), templates.c.org_id.is_(None))  # an id first, then the own name, then the shared
    )
    return _one((await conn.execute(q.limit(1))).first())


async def name_taken(conn: AsyncConnection, name: str, org_id: str | None) -> bool:
    """Whether namespace `org_id` (None: the shared one) holds a template named `name`."""
    q = select(templates.c.id).where(in_namespace(org_id), templates.c.name == name)
    return (await conn.execute(q)).first() is not None


async def find_image(conn: AsyncConnection, org_id: str | None, source_url: str, checksum: str) -> Template | None:
    """A template of namespace `org_id` made from `source_url` whose checksum is `checksum`
    (`sha256:<hex>`), ready or being imported (an import checks it), oldest first."""
    q = select(templates).where(
        in_namespace(org_id), templates.c.source_url == source_url, templates.c.checksum == checksum, templates.c.status.in_(("ready", "importing"))
    )
    return _one((await conn.execute(q.order_by(templates.c.seq).limit(1))).first())


async def list_templates(conn: AsyncConnection, *, after_seq: int | None, limit: int, org_id: str | None = None) -> list[Template]:
    """Templates shared with everyone, plus `org_id`'s own."""
    q = select(templates)
    if org_id is not None:
        q = q.where(or_(templates.c.org_id.is_(None), templates.c.org_id == org_id))
    if after_seq is not None:
        q = q.where(templates.c.seq > after_seq)
    return [Template.from_row(r) for r in (await conn.execute(q.order_by(templates.c.seq).limit(limit))).all()]


async def set_template(conn: AsyncConnection, template_id: str, **values: Any) -> None:
    await conn.execute(update(templates).where(templates.c.id == template_id).values(**values))


async def delete_template(conn: AsyncConnection, template_id: str) -> None:
    await conn.execute(delete(templates).where(templates.c.id == template_id))
