"""vm-network: hand a VM's current NICs (addresses) and firewall to its node's driver.

The task reads the store when it runs, not what was asked when it was queued: after several
quick changes every task applies the newest state, and a task resumed after a crash too."""

from ...domain import VmStatus
from ..engine import TaskContext
from .base import BaseHandler, load_vm


class VmNetwork(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        vm = await load_vm(ctx)
        if vm.node_id is None or vm.status in (VmStatus.PROVISIONING, VmStatus.DELETING):
            ctx.log(f"VM is {vm.status}: its network is set when it is created")
            return
        async with ctx.deps.store.read() as conn:
            nics = await ctx.deps.networks.nics(conn, vm)
            firewall = await ctx.deps.networks.firewall_of(conn, vm.id)
        await ctx.deps.registry.driver(vm.node_id).set_network(vm.id, nics, firewall)
        rules = sum(1 for r in firewall.rules if r.enable)
        state = f"enabled, in {firewall.policy_in}, out {firewall.policy_out}, {rules} rule(s)" if firewall.enabled else "disabled"
        ctx.log(f"applied on {vm.node_id}: {len(nics)} NIC(s), firewall {state}")
