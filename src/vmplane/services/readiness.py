"""Guest readiness: watching each boot of a VM until its guest is ready, and long-polls on it.

The driver says how far a guest has come (`HypervisorDriver.guest_state`); this service asks
it after every boot the control plane sees (each `vm.running` event, and at start-up every
running VM not ready yet), on the nodes this process serves, and records the answer once per
boot: `vms.guest_ready`, the SSH host key the guest printed (into the VM's `ssh` endpoint, so
`vmplane vm ssh` checks it), and the `vm.guest_ready` event (`store.vms.set_guest_ready`). Any
status other than `running` makes `guest_ready` false again (`store.vms.set_status`).

`wait_ready` is the long-poll of `GET /api/v1/vms/{id}?waitReady=S`: it waits on the event bus
(no database connection or thread held meanwhile) and answers as soon as the VM is ready, has
left the states on the way to it (stopped, error …), or the time is up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..domain import Vm, VmStatus
from ..drivers.base import GuestState
from ..errors import DriverError, InvalidRequest, InvalidState, NotFound
from ..events.bus import GoingAway, SlowConsumer
from ..store import StoreUnavailable
from ..store import vms as vm_q
from .vms import get_visible_vm

if TYPE_CHECKING:
    from ..auth import Principal
    from ..drivers.registry import NodeRegistry
    from ..events.bus import EventBus
    from ..store import Store

log = logging.getLogger("vmplane.readiness")

WAIT_READY_MAX = 300.0
"""the longest `waitReady` one request may ask for, in seconds"""
WATCH_STEP = 60.0
"""each question to a driver waits at most this long (then the VM's record is read again)"""
RETRY_AFTER = 5.0
"""a node that could not answer is asked again after this many seconds"""
ON_THE_WAY = frozenset({VmStatus.PROVISIONING, VmStatus.STARTING, VmStatus.REBOOTING, VmStatus.RUNNING})
"""states from which a VM may still become ready without anyone asking"""
KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def parse_wait(value: str | None) -> float | None:
    """`waitReady` as given (seconds, 0 to WAIT_READY_MAX); None when not given."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= WAIT_READY_MAX:  # also NaN
        raise InvalidRequest(f"waitReady must be seconds from 0 to {WAIT_READY_MAX:g}, not {value[:32]!r}", field="waitReady")
    return seconds


def preferred_key(keys: tuple[str, ...]) -> str | None:
    """The host key `ssh` is told to expect: ed25519 first (OpenSSH then asks for that type)."""
    return min(keys, key=lambda k: KEY_PREFERENCE.index(k.split(" ", 1)[0]), default=None)


class ReadinessService:
    def __init__(self, *, store: Store, registry: NodeRegistry, bus: EventBus) -> None:
        self.store = store
        self.registry = registry
        self.bus = bus
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- watching boots ---------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="readiness")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._watches.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()

    async def _run(self) -> None:
        while True:
            try:
                async with self.bus.subscribe(types=("vm.running",)) as sub:  # first, so no boot is missed
                    await self._watch_unready()
                    async for event in sub:
                        if event.resource is not None:
                            self.watch(event.resource, event.data.get("nodeId"))
            except GoingAway:
                return  # the server is shutting down
            except SlowConsumer as exc:
                log.warning("readiness: the event stream ended (%s); looking at every running VM again", exc)
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("readiness: watching boots failed; again in %g s", RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)

    async def _watch_unready(self) -> None:
        """Running VMs whose guest is not ready, on nodes this process serves (after a restart)."""
        for node_id, _driver in self.registry.items():
            async with self.store.read() as conn:
                rows = await vm_q.vms_on_node(conn, node_id)
            for vm in rows:
                if vm.status == VmStatus.RUNNING and not vm.guest_ready:
                    self.watch(vm.id, node_id)

    def watch(self, vm_id: str, node_id: Any) -> None:
        """Follow the VM's current boot until its guest is ready (a previous watch of it ends)."""
        if not isinstance(node_id, str) or node_id not in self.registry:
            return  # a node another replica serves: it watches
        old = self._watches.pop(vm_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._watch(vm_id, node_id), name=f"ready-{vm_id}")
        self._watches[vm_id] = task
        task.add_done_callback(lambda t: self._watches.pop(vm_id, None) if self._watches.get(vm_id) is t else None)

    async def _watch(self, vm_id: str, node_id: str) -> None:
        while True:
            try:
                async with self.store.read() as conn:
                    vm = await vm_q.get_vm(conn, vm_id)
                if vm is None or vm.status != VmStatus.RUNNING or vm.node_id != node_id or vm.guest_ready:
                    return
                state = await self.registry.driver(node_id).guest_state(vm_id, WATCH_STEP)
                if state.ready:
                    await self._record(vm_id, state)
                    return
            except InvalidState:
                return  # it stopped: its next start is another `vm.running`
            except (DriverError, NotFound, StoreUnavailable) as exc:  # the node or the store, out of reach for now
                log.info("readiness of %s: %s; asking again in %g s", vm_id, exc.message, RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)

    async def _record(self, vm_id: str, state: GuestState) -> None:
        key = preferred_key(state.host_keys)
        async with self.store.write() as conn:
            spec = None
            if key is not None:  # the VM's spec keeps its SSH host key (a guest without one: no read)
                vm = await vm_q.get_vm(conn, vm_id)
                if vm is None:
                    return
                if vm.spec.ssh is not None and vm.spec.ssh.host_key != key:
                    spec = vm.spec.with_(ssh=dataclasses.replace(vm.spec.ssh, host_key=key)).to_json()
            if await vm_q.set_guest_ready(conn, vm_id, spec, state.detail):
                log.info("guest of %s is ready: %s", vm_id, state.detail)

    # -- the long-poll ----------------------------------------------------------------------

    async def wait_ready(self, ref: str, who: Principal, seconds: float) -> Vm:
        """The VM as soon as its guest is ready, or it is in a state from which it will not
        become ready by itself (stopped, error, …), or after `seconds`; waits on the event bus."""
        vm = await get_visible_vm(self.store, ref, who)
        if seconds <= 0 or _settled(vm):
            return vm
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            async with self.bus.subscribe(resource=vm.id, org_id=vm.org_id) as sub:
                vm = await get_visible_vm(self.store, vm.id, who)  # again: nothing slips between read and subscribe
                while not _settled(vm):
                    left = deadline - loop.time()
                    if left <= 0 or await sub.get(left) is None:
                        break
                    vm = await get_visible_vm(self.store, vm.id, who)
        except SlowConsumer:
            pass  # the server is going away, or the stream fell behind: answer what is known
        return await get_visible_vm(self.store, vm.id, who)


def _settled(vm: Vm) -> bool:
    return vm.guest_ready or vm.status not in ON_THE_WAY
