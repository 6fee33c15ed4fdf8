"""template-delete: refuse while VMs use it, else remove its image everywhere."""

from ... import clock
from ...errors import Conflict
from ...store import snapshots as snap_q
from ...store import templates as tpl_q
from ...store import vms as vm_q
from ..engine import TaskContext
from .base import BaseHandler


class TemplateDelete(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        async with deps.store.write() as conn:
            tpl = await tpl_q.get_template(conn, ctx.resource_id)
            if tpl is None:
                ctx.log("already deleted")
                return
            users = await vm_q.vms_using_template(conn, tpl.id)
            if users:
                raise Conflict(f"template {tpl.name} is used by {users} VM(s); delete them first")
            snaps = await snap_q.using_template(conn, tpl.id)
            if snaps:
                raise Conflict(f"template {tpl.name} backs {snaps} snapshot(s); delete them first")
            # From here on no new VM may start from it (creates need status `ready`).
            await tpl_q.set_template(conn, tpl.id, status="deleting", updated_at=clock.now())
        ctx.log(f"Starting delete of template {tpl.name}")
        for node_id, driver in deps.registry.items():
            if driver.offline is not None:
                ctx.log(f"node {node_id} is offline: its copy of the image stays there")
                continue
            await driver.delete_image(tpl.id)
            deps.registry.images_on[node_id].pop(tpl.id, None)
        (deps.images_dir / f"{tpl.id}.img").unlink(missing_ok=True)
        async with deps.store.write() as conn:
            await tpl_q.delete_template(conn, tpl.id)

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        async with ctx.deps.store.write() as conn:
            tpl = await tpl_q.get_template(conn, ctx.resource_id)
            if tpl is not None and tpl.status == "deleting":
                await tpl_q.set_template(conn, tpl.id, status="ready", updated_at=clock.now())
