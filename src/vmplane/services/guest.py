"""Reaching into running guests: serial and graphical consoles (one-time tokens),
screenshots, exec, stats.

These are interactive calls, not jobs: they change no VM state, so they go to the VM's
driver directly, and each checks the driver declares the capability.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from typing import TYPE_CHECKING

from .. import clock
from ..auth import Principal
from ..domain import SshForward, Vm, VmStatus
from ..domain.spec import SSH_HOST
from ..drivers.base import ExecResult, HypervisorDriver, PowerState, VmStats
from ..errors import Conflict, InvalidRequest, InvalidState, NotFound
from ..store import events as ev_q
from ..store import guest as guest_q
from ..store import ports as ports_q
from ..store import templates as tpl_q
from ..store import vms as vm_q
from ..streams import StreamSlot
from ..vmstates import VmOp, require_state
from ..wsconsole import COLS, ROWS, ConsoleSize
from .vms import AUTO_PORTS, get_visible_vm, port_is_free

if TYPE_CHECKING:
    from ..drivers.registry import NodeRegistry
    from ..store import Store
    from ..streams import StreamLimits


CONSOLE_TOKEN_SECONDS = 60
CONSOLE_TTY = "/dev/ttyS0"
"""the guest's serial console (the first serial port, where vmplane's console connects)"""
CONSOLE_SIZE_SECONDS = 15
SCREENSHOT_MAX_BYTES = 16 << 20
"""the largest screenshot PNG served (a 2560x1600 screen of noise is ~12 MiB; text ~10 KiB)"""
EXEC_MAX_OUTPUT = 1024 * 1024
EXEC_MAX_SECONDS = 600


def token_hash(token: str, kind: str = "console") -> str:
    """What the store keeps of a one-time token: its SHA-256, of the token prefixed with the
    kind of stream it opens for anything but the serial console (`vnc:<token>`), so a token
    handed out for one kind of console never opens the other."""
    return hashlib.sha256((token if kind == "console" else f"{kind}:{token}").encode()).hexdigest()


def require_running(vm: Vm) -> None:
    """InvalidState (409) naming the VM's state and the way out, unless it runs: what the
    console and `vmplane vm ssh` answer for a VM that is not running."""
    if vm.status == VmStatus.RUNNING:
        return
    hint: dict[str, str] = {
        VmStatus.STOPPED.value: f"; start it with `vmplane vm start {vm.name}`",
        VmStatus.ERROR.value: f"; see `vmplane vm get {vm.name}` for its error",
    }
    why = hint.get(str(vm.status), "; try again once it is running")
    raise InvalidState(f"{vm.name} is {vm.status}{why}", current=vm.status, required=VmStatus.RUNNING.value)


_TOKEN_KIND = {"console": "console", "display": "vnc"}
"""the capability a one-time token's stream needs -> the kind its hash is kept under"""


class GuestService:
    def __init__(self, *, store: Store, registry: NodeRegistry, streams: StreamLimits) -> None:
        self.store = store
        self.registry = registry
        self.streams = streams

    def _driver(self, vm: Vm, capability: str, need_running: bool = True) -> HypervisorDriver:
        if vm.node_id is None:
            raise InvalidState(f"VM {vm.id} is {vm.status} and on no node", current=vm.status)
        driver = self.registry.driver(vm.node_id)
        if not getattr(driver.capabilities, capability):
            raise Conflict(
                f"{vm.node_id} runs the {driver.capabilities.kind} driver, which has no {capability.replace('_', ' ')}",
                capability=capability,
            )
        if need_running:
            require_state(VmOp.GUEST, vm.status, vm.id)
        return driver

    async def console_token(self, ref: str, who: Principal, ttl: float = CONSOLE_TOKEN_SECONDS) -> tuple[str, float, Vm]:
        """A one-time token for the VM's serial console, good for `ttl` seconds (at most
        CONSOLE_TOKEN_SECONDS); the VM must run on a node with a console."""
        return await self._token(ref, who, ttl, "console")

    async def vnc_token(self, ref: str, who: Principal, ttl: float = CONSOLE_TOKEN_SECONDS) -> tuple[str, float, Vm]:
        """A one-time token for the VM's graphical console (its VNC server, RFB over a
        WebSocket), as `console_token`; the VM must run on a node with a display."""
        return await self._token(ref, who, ttl, "display")

    async def _token(self, ref: str, who: Principal, ttl: float, capability: str) -> tuple[str, float, Vm]:
        vm = await get_visible_vm(self.store, ref, who)
        require_running(vm)
        self._driver(vm, capability)
        token = secrets.token_urlsafe(24)
        now = clock.now()
        expires = now + min(ttl, CONSOLE_TOKEN_SECONDS)
        async with self.store.write() as conn:
            await guest_q.add_console_token(conn, token_hash(token, _TOKEN_KIND[capability]), vm.id, expires, now, who.limit_key)
        return token, expires, vm

    async def open_console(self, ref: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, StreamSlot]:
        """Spend a console token and connect to the VM's serial console (the token is the
        credential: it was given to someone allowed to use this VM's console). The console
        holds a stream slot of the credential that asked for the token (RateLimited, 429, when
        it has none free); the caller releases it when the console closes."""
        return await self._open(ref, token, "console")

    async def open_vnc(self, ref: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, StreamSlot]:
        """Spend a VNC token (`vnc_token`) and connect to the VM's VNC server, as
        `open_console`: the stream holds a slot of the credential that asked for the token."""
        return await self._open(ref, token, "display")

    async def _open(self, ref: str, token: str, capability: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, StreamSlot]:
        kind = _TOKEN_KIND[capability]
        async with self.store.read() as conn:
            vm = await vm_q.get_vm(conn, ref)
        if vm is None:
            raise NotFound(f"{kind} token is unknown, used or expired")
        async with self.store.write() as conn:
            spent = await guest_q.use_console_token(conn, token_hash(token, kind), vm.id, clock.now())
        if spent is None:
            raise NotFound(f"{kind} token is unknown, used or expired")
        require_running(vm)
        slot = self.streams.hold_for(spent.holder or f"console:{vm.org_id}", vm.org_id)
        try:
            driver = self._driver(vm, capability)
            reader, writer = await (driver.open_vnc(vm.id) if capability == "display" else driver.open_console(vm.id))
        except BaseException:
            slot.release()
            raise
        return reader, writer, slot

    async def screenshot(self, ref: str, who: Principal) -> tuple[Vm, bytes]:
        """A PNG of the running VM's screen now (its display adapter, through the driver)."""
        vm = await get_visible_vm(self.store, ref, who)
        require_running(vm)
        return vm, await self._driver(vm, "display").screenshot(vm.id, SCREENSHOT_MAX_BYTES)

    async def set_console_size(self, vm_id: str, size: ConsoleSize) -> None:
        """Tell the guest its serial console's size, as the terminal showing it is sized:
        `stty -F /dev/ttyS0 rows R cols C` run by the guest agent (an argv of validated
        numbers, no shell). Only for an open console: its token was the credential."""
        if not (ROWS[0] <= size.rows <= ROWS[1] and COLS[0] <= size.cols <= COLS[1]):
            raise InvalidRequest(f"the size must be {ROWS[0]}-{ROWS[1]} rows by {COLS[0]}-{COLS[1]} columns", field="rows")
        async with self.store.read() as conn:
            vm = await vm_q.get_vm(conn, vm_id)
        if vm is None:
            raise NotFound(f"VM {vm_id} not found")
        argv = ["stty", "-F", CONSOLE_TTY, "rows", str(size.rows), "cols", str(size.cols)]
        r = await self._driver(vm, "exec").exec_vm(vm.id, argv, CONSOLE_SIZE_SECONDS, 4096)
        if r.timed_out or r.exit_code != 0:
            why = "timed out" if r.timed_out else (r.stderr.decode("utf-8", "replace").strip() or f"exit status {r.exit_code}")
            raise Conflict(f"the guest did not take the terminal size: stty {why}"[:300])

    async def console_log(self, ref: str, max_bytes: int, who: Principal) -> bytes:
        vm = await get_visible_vm(self.store, ref, who)
        return await self._driver(vm, "console", need_running=False).console_log(vm.id, max_bytes)

    async def exec(self, ref: str, argv: list[str], timeout: float, who: Principal) -> ExecResult:
        if not argv or not argv[0]:
            raise InvalidRequest("command must name a program to run", field="command")
        if not 0 < timeout <= EXEC_MAX_SECONDS:
            raise InvalidRequest(f"timeoutSec must be more than 0 and at most {EXEC_MAX_SECONDS}", field="timeoutSec")
        vm = await get_visible_vm(self.store, ref, who)
        return await self._driver(vm, "exec").exec_vm(vm.id, argv, timeout, EXEC_MAX_OUTPUT)

    async def stats(self, ref: str, who: Principal) -> tuple[Vm, VmStats]:
        vm = await get_visible_vm(self.store, ref, who)
        return vm, await self._driver(vm, "stats").stats_vm(vm.id)

    async def ensure_ports(self, vm_id: str, driver: HypervisorDriver) -> list[str]:
        """Before a start: each host port the stopped VM forwards (its `expose`, its SSH
        forward) that something else now holds on its node is re-picked, so the start cannot
        fail for it: a free port no other VM holds replaces it in the store's reservations, in
        the VM's spec (what `ssh` and `expose` show) and on the node, and `vm.port_changed`
        says so. Only where the node's ports are this host's (`capabilities.local`). Returns
        lines for the task log (none when nothing moved)."""
        if not driver.capabilities.local:
            return []
        runtime = await driver.get_vm(vm_id)
        if runtime is None or runtime.state != PowerState.STOPPED:
            return []  # a running VM holds its own ports (its start is a no-op)
        address = driver.forward_host()
        async with self.store.write() as conn:
            vm = await vm_q.get_vm(conn, vm_id)
            if vm is None:
                return []
            wanted = [(e.protocol, e.host_port, e.port) for e in vm.spec.expose if e.host_port]
            if vm.spec.ssh is not None and vm.spec.ssh.reserved:
                wanted.append(("tcp", vm.spec.ssh.host_port, 22))
            lost = [w for w in wanted if not port_is_free(w[1], w[0], address)]
            if not lost:
                return []
            reserved = await guest_q.taken_ports(conn)
            moves: dict[tuple[str, int], int] = {}
            lines: list[str] = []
            events = []
            for proto, old, guest_port in lost:
                for port in AUTO_PORTS:
                    if (port, proto) in reserved or not port_is_free(port, proto, address):
                        continue
                    if await ports_q.move_port(conn, vm.id, proto, old, port):
                        break
                    reserved.add((port, proto))  # another VM took it meanwhile
                else:
                    lines.append(f"host port {old}/{proto} is taken and no free host port is left: the start will fail")
                    continue
                reserved.add((port, proto))
                moves[(proto, old)] = port
                what = "SSH" if guest_port == 22 else f"guest port {guest_port}/{proto}"
                lines.append(f"host port {old} was taken by another program: {what} is now forwarded from {port}")
                events.append({
                    "id": vm.id, "name": vm.name, "protocol": proto, "guestPort": guest_port, "hostPort": port, "previousHostPort": old,
                    "reason": f"host port {old} was taken by another program while {vm.name} was stopped",
                })  # fmt: skip
            if not moves:
                return lines
            expose = tuple(
                dataclasses.replace(e, host_port=moves.get((e.protocol, e.host_port or 0), e.host_port)) for e in vm.spec.expose
            )
            ssh = vm.spec.ssh
            if ssh is not None and ("tcp", ssh.host_port) in moves:
                ssh = dataclasses.replace(ssh, host_port=moves[("tcp", ssh.host_port)])
            await vm_q.set_vm(conn, vm.id, spec=vm.spec.with_(expose=expose, ssh=ssh).to_json(), updated_at=clock.now())
            await ev_q.emit_many(conn, [("vm.port_changed", vm.id, data, vm.org_id, vm.team_id) for data in events])
            await driver.move_ports(vm.id, moves)  # last: if it fails, the store keeps the old ports
        return lines

    async def prepare_ssh(self, vm_id: str, driver: HypervisorDriver) -> str | None:
        """Give a VM placed on a qemu node with a user-mode NIC its SSH forward: a host port
        on the node's loopback to guest port 22, reserved once and kept in the VM's spec
        (`ssh`), so it stays the same across stop/start, restarts and moves. A VM that
        exposes guest port 22 itself keeps that forward. Nothing for other drivers (sim; a
        remote node's loopback is not the control plane's) or VMs only on bridges (their
        address is reachable as it is). Idempotent; returns a line for the task log."""
        if not (driver.capabilities.real_vms and driver.capabilities.local):
            return None
        async with self.store.write() as conn:
            vm = await vm_q.get_vm(conn, vm_id)
            if vm is None or vm.spec.ssh is not None or not vm.spec.has_user_nic:
                return None
            host_key = None
            if vm.template_id is not None:
                tpl = await tpl_q.get_template(conn, vm.template_id)
                host_key = tpl.ssh_host_key if tpl is not None else None
            own = vm.spec.forward(22)
            if own is not None:
                assert own.host_port is not None  # given at create
                ssh = SshForward(own.host_port, host_key, reserved=False)
            else:
                taken = await guest_q.taken_ports(conn)
                for port in AUTO_PORTS:  # a port another create took meanwhile: the next one
                    if (port, "tcp") not in taken and port_is_free(port, "tcp") and await guest_q.reserve_port(conn, vm.id, port, "tcp"):
                        break
                else:
                    return "no free host port to forward SSH to: the VM has no SSH forward"
                ssh = SshForward(port, host_key, reserved=True)
            await vm_q.set_vm(conn, vm.id, spec=vm.spec.with_(ssh=ssh).to_json())
        return f"SSH on {SSH_HOST}:{ssh.host_port}"
