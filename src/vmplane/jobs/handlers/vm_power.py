"""vm-start, vm-stop, vm-shutdown, vm-reboot, vm-power-cycle."""

from ... import clock
from ...domain import VmStatus
from ...drivers.base import PowerState
from ...errors import DriverError, VmplaneError
from ...vmstates import allows, require_state
from ..engine import TaskContext
from .base import BaseHandler, driver_of, find_vm, load_vm, set_status, start_vm

TRANSIENT = {
    "start": VmStatus.STARTING,
    "stop": VmStatus.STOPPING,
    "shutdown": VmStatus.STOPPING,
    "reboot": VmStatus.REBOOTING,
    "power-cycle": VmStatus.REBOOTING,
}


class VmPower(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        action = ctx.payload["action"]
        vm = await load_vm(ctx)
        if vm.node_id is None:
            raise VmplaneError(f"VM {vm.id} is not placed on any node")
        if not allows(action, vm.status):
            if not ctx.resumed:
                require_state(action, vm.status, vm.id)
            if vm.status != TRANSIENT[action]:  # the interrupted attempt finished the work
                ctx.log(f"resumed: the VM is already {vm.status}")
                await self._record(ctx, vm.id)
                return
        driver = ctx.deps.registry.driver(vm.node_id)
        ctx.log(f"Starting {action} of {vm.name}")
        await set_status(ctx, vm.id, TRANSIENT[action])
        if action == "start":
            await start_vm(ctx, vm.id, driver)
        elif action == "stop":
            await driver.stop_vm(vm.id)
        elif action == "shutdown":
            timeout = float(ctx.payload.get("timeout", ctx.deps.settings.shutdown_timeout_seconds))
            graceful = await driver.shutdown_vm(vm.id, timeout)
            ctx.log("guest powered off" if graceful else f"guest did not power off within {timeout:g}s; forced off")
        elif action == "reboot":
            await driver.reboot_vm(vm.id)
        else:
            await driver.power_cycle_vm(vm.id)
        await self._record(ctx, vm.id)

    async def _record(self, ctx: TaskContext, vm_id: str) -> None:
        vm = await load_vm(ctx)
        runtime = await driver_of(ctx, vm).get_vm(vm_id)
        if runtime is None:
            await set_status(ctx, vm_id, VmStatus.ERROR, error="the hypervisor no longer knows this VM", started_at=None, running_spec=None)
        elif runtime.state == PowerState.RUNNING:
            # what the process has, as its hypervisor says: a reboot keeps it, so a resize
            # still waits (pendingRestart); a start or power-cycle gives it the record's shape
            started = runtime.started_at or clock.now()
            await set_status(ctx, vm_id, VmStatus.RUNNING, started_at=started, error=None, running_spec=runtime.running_spec)
        else:
            await set_status(ctx, vm_id, VmStatus.STOPPED, started_at=None, error=None, running_spec=None)

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        vm = await find_vm(ctx)
        if vm is None:  # deleted meanwhile
            return
        if vm.node_id is not None and vm.node_id in ctx.deps.registry:
            try:
                await self._record(ctx, vm.id)
            except DriverError as exc:  # the node is unreachable (offline): nobody knows
                ctx.log(f"the VM's state cannot be read: {exc.message}")
                await set_status(ctx, vm.id, VmStatus.UNKNOWN)
