"""Moving VMs between nodes: drain a node (cordon it, move its stopped VMs), move one stopped
VM, live-migrate one running VM. Operators only: they decide where VMs run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..auth import Principal
from ..domain import VmStatus
from ..errors import Forbidden, InvalidRequest, InvalidState, NotFound
from ..store import jobs as job_q
from ..store import nodes as node_q
from ..store import vms as vm_q
from ..vmstates import VmOp, require_state

if TYPE_CHECKING:
    from ..jobs.engine import JobEngine
    from ..store import Store
    from .cluster import ClusterService


def operator_only(who: Principal) -> None:
    if not who.operator:
        raise Forbidden("only operators (owners and admins of the bootstrap organization) move VMs between nodes")


def move_payload(source: str, target: str | None) -> dict[str, Any]:
    """The payload of a vm-move or vm-migrate task (jobs/handlers/vm_move.py reads it): from
    where, and to where (None: placement chooses)."""
    return {"source": source, "target": target}


class MoveService:
    def __init__(self, *, store: Store, engine: JobEngine, cluster: ClusterService) -> None:
        self.store = store
        self.engine = engine
        self.cluster = cluster

    async def drain(self, who: Principal, node_id: str) -> tuple[str | None, list[str]]:
        """Cordon the node; one `node-drain` job with a `vm-move` task per stopped VM on it."""
        await self.cluster.set_cordon(who, node_id, True)
        async with self.store.write() as conn:
            vms = [v for v in await vm_q.vms_on_node(conn, node_id) if v.status == VmStatus.STOPPED.value]
            busy = await job_q.active_task_for(conn, [v.id for v in vms])
            vms = [v for v in vms if v.id not in busy]
            if not vms:
                return None, []
            job_id = await self.engine.submit(conn, "node-drain", who, [(v.id, move_payload(node_id, None)) for v in vms], task_type="vm-move")
        self.engine.wakeup()
        return job_id, [v.id for v in vms]

    async def _vm_and_target(self, who: Principal, vm_ref: str, target: str | None) -> Any:
        operator_only(who)
        async with self.store.read() as conn:
            vm = await vm_q.get_vm(conn, vm_ref)
            if vm is None:
                raise NotFound(f"VM {vm_ref} does not exist")
            if target is not None and await node_q.get_node(conn, target) is None:
                raise InvalidRequest(f"targetNodeId {target!r} does not exist", field="targetNodeId")
            busy = await job_q.active_task_for(conn, [vm.id])
        if vm.node_id is None:
            raise InvalidState(f"VM {vm.id} is {vm.status} and on no node", current=vm.status)
        if target == vm.node_id:
            raise InvalidRequest(f"VM {vm.id} is on {target} already", field="targetNodeId")
        if busy:
            raise InvalidState(f"VM {vm.id} has work in progress; move it when that is done", current=vm.status)
        return vm

    async def move(self, who: Principal, vm_ref: str, target: str | None) -> str:
        vm = await self._vm_and_target(who, vm_ref, target)
        require_state(VmOp.MOVE, vm.status, vm.id)
        async with self.store.write() as conn:
            job_id = await self.engine.submit(conn, "vm-move", who, [(vm.id, move_payload(vm.node_id, target))])
        self.engine.wakeup()
        return job_id

    async def migrate(self, who: Principal, vm_ref: str, target: str | None) -> str:
        vm = await self._vm_and_target(who, vm_ref, target)
        require_state(VmOp.MIGRATE, vm.status, vm.id)
        async with self.store.write() as conn:
            job_id = await self.engine.submit(conn, "vm-migrate", who, [(vm.id, move_payload(vm.node_id, target))])
        self.engine.wakeup()
        return job_id
