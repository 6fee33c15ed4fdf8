"""template-update: rename a template, change its OS label or its login user."""

from ... import clock
from ...errors import Conflict, Reason, VmplaneError
from ...store import templates as tpl_q
from ..engine import TaskContext
from .base import BaseHandler


class TemplateUpdate(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        values = {k: v for k, v in ctx.payload.items() if v is not None}
        async with ctx.deps.store.write() as conn:
            tpl = await tpl_q.get_template(conn, ctx.resource_id)
            if tpl is None:
                raise VmplaneError(f"template {ctx.resource_id} no longer exists")
            if "name" in values and values["name"] != tpl.name:
                if await tpl_q.name_taken(conn, values["name"], tpl.org_id):  # within its own namespace
                    raise Conflict(f"a template named {values['name']!r} already exists", reason=Reason.NAME_TAKEN)
            await tpl_q.set_template(conn, tpl.id, **values, updated_at=clock.now())
        ctx.log("updated " + ", ".join(f"{k}={v}" for k, v in values.items()))
