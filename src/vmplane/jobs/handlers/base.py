"""What every handler shares: default rollback/discard, and loading the task's VM."""

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import Resources, VmSpec, VmStatus
from ...errors import VmplaneError
from ...store import vms as vm_q
from ..engine import TaskContext


class BaseHandler:
    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        return None

    async def discard(self, conn: AsyncConnection, task: Row) -> None:
        return None


async def load_vm(ctx: TaskContext) -> Row:
    async with ctx.rt.store.read() as conn:
        vm = await vm_q.get_vm(conn, ctx.resource_id)
    if vm is None:
        raise VmplaneError(f"VM {ctx.resource_id} no longer exists")
    return vm


async def set_status(ctx: TaskContext, vm_id: str, status: VmStatus, **values: object) -> None:
    async with ctx.rt.store.write() as conn:
        await vm_q.set_status(conn, vm_id, status.value, updated_at=clock.now(), **values)


def vm_spec(vm: Row, template_image: str | None = None, template_boot: dict[str, str] | None = None) -> VmSpec:
    return VmSpec(
        id=vm.id,
        uuid=vm.uuid,
        name=vm.name,
        resources=Resources(vm.cpu, vm.ram_mb, vm.disk_gb),
        template_id=vm.template_id,
        template_image=template_image,
        template_boot=template_boot,
        extra=dict(vm.spec or {}),
    )
