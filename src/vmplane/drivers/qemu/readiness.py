"""When a qemu VM's guest is ready, and the SSH host keys it printed: for `guest_state`.

Each boot of a VM (a start of its QEMU, or a reset of the guest) is followed by one tracker
task, started on the first question about it, that looks once a second at:

- the serial console's log from where this boot began (its offset in `serial.log`): the first
  output, and the first `-----BEGIN SSH HOST KEY KEYS-----` block (cloud-init prints it);
- whether the guest opened its agent's virtio-serial port (QMP `query-chardev`,
  `frontend-open`), and once it has, the agent itself, through guest-exec: is cloud-init
  there, has it written its result file, what does `cloud-init status` say.

Ready means: the agent answers and cloud-init is done (or not there). A guest that has not
opened its agent port is taken to have no agent once it shows a login prompt on its console
(and LOGIN_SETTLE seconds passed), or AGENTLESS_AFTER seconds after its first output.

Console text is the guest's and is never trusted: host keys are taken only from the first
block after the boot began, each line checked as an OpenSSH public key whose blob names its
own type, comments dropped; nothing of it reaches a path or a command.
"""

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field

from ...aio import wait_event
from ...errors import DriverError
from ..base import GuestState
from .machines import Machines, QemuVm

log = logging.getLogger("vmplane.drivers.qemu")

POLL = 1.0
"""how often a tracker looks at its guest"""
AGENTLESS_AFTER = 600.0
"""a guest that has not opened its agent port this long after its first serial output, and
shows no login prompt, is taken to have none (Debian 12 under TCG on a loaded 2-core machine
had not opened it 90 s after its first output: its agent starts after cloud-init's first
stages, which are ordered before sysinit.target)"""
LOGIN_SETTLE = 15.0
"""a guest that shows a login prompt on its console (getty: after basic.target, by when a
systemd guest's agent has its port open) and has not opened its agent port this long after
has no agent"""
LOGIN_RE = re.compile(rb"[A-Za-z0-9._-]+ login: ")
REBOOT_GRACE = 300.0
"""after a reboot is asked for, the running boot is not ready for this long unless the guest resets"""
CONSOLE_SCAN_MAX = 4 << 20
"""host keys are looked for in the first 4 MiB a boot writes on its console, no further"""
AGENT_CHARDEV = "qga0"
BEGIN = b"-----BEGIN SSH HOST KEY KEYS-----"
END = b"-----END SSH HOST KEY KEYS-----"
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_KEY_RE = re.compile(r"^([a-z0-9-]{7,19}) ([A-Za-z0-9+/]{16,2800}={0,2})(?: [^\x00-\x1f]*)?$")
SETTLE_MAX = 2.0
"""how long a ready guest's half-printed host-key block is waited for"""
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"
STATUS_EVERY = 120.0
"""how often `cloud-init status` is asked while no result file says cloud-init is done: only
for a cloud-init that never writes one (disabled). It costs ~10 CPU seconds of a 1-vCPU TCG
guest, taken from cloud-init itself; asked every 30 s it delayed Debian's readiness by up to
7.5 s (bench/ready.py), so the result file alone decides in the common case."""
CLOUD_INIT_DONE = {"done", "error", "degraded", "disabled"}
"""`cloud-init status` answers after which cloud-init will do nothing more this boot"""


def parse_host_keys(console: bytes) -> tuple[str, ...] | None:
    """The keys of the first complete host-key block in `console` (None: no complete block
    yet), each `type base64` (comments dropped), checked: a known type whose blob begins with
    that same type, as OpenSSH's wire format has it. Lines that are no such key are skipped."""
    start = console.find(BEGIN)
    if start < 0:
        return None
    end = console.find(END, start)
    if end < 0:
        return None
    keys: list[str] = []
    for raw in console[start + len(BEGIN) : end].splitlines():
        line = raw.decode("ascii", errors="replace").strip()
        m = _KEY_RE.match(line)
        if m is None or m.group(1) not in KEY_TYPES:
            continue
        try:
            blob = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(blob) < 4 or blob[4 : 4 + struct.unpack(">I", blob[:4])[0]] != m.group(1).encode():
            continue
        key = f"{m.group(1)} {m.group(2)}"
        if key not in keys:
            keys.append(key)
    return tuple(keys)


@dataclass
class Boot:
    """One boot of a VM's guest as its tracker sees it."""

    key: str
    serial_offset: int
    first_output: float | None = None
    agent_port: bool = False
    cloud_init: bool | None = None
    """cloud-init is in the guest (None: not asked yet)"""
    status_checked: float = 0.0
    ready: bool = False
    detail: str = "booting: no serial output yet"
    host_keys: tuple[str, ...] | None = None
    login_seen: float | None = None
    """when a login prompt showed on the console (looked for until the agent port opens)"""
    tail: bytes = b""
    console: bytearray = field(default_factory=bytearray)
    scanned: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def state(self) -> GuestState:
        return GuestState(ready=self.ready, boot=self.key, host_keys=self.host_keys or (), detail=self.detail)


class Readiness:
    """The trackers of one node's VMs."""

    def __init__(self, machines: Machines) -> None:
        self.machines = machines

    def reset(self, vm_id: str) -> None:
        """The guest reset (QMP RESET: a reboot): a new boot begins where its console is now."""
        vm = self.machines.vms.get(vm_id)
        if vm is None:
            return
        pid = self.machines.live_pid(vm)
        count = vm.reset_mark[1] + 1 if vm.reset_mark is not None and vm.reset_mark[0] == pid else 1
        vm.reset_mark = (pid, count, _size(vm.paths.serial_log))

    def expect_reset(self, vm_id: str) -> None:
        """A reboot was asked for: the boot now running is ending, though its agent may answer
        a while yet (a guest's own reboot takes seconds); it is not ready again until the
        guest resets (or REBOOT_GRACE passes without a reset)."""
        vm = self.machines.vms.get(vm_id)
        if vm is not None:
            vm.reset_expected = (self._current(vm)[0], time.monotonic() + REBOOT_GRACE)

    async def state(self, vm_id: str, wait: float) -> GuestState:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            vm = self.machines.running(vm_id)  # InvalidState once it stopped, also while waited on
            boot = self._boot(vm)
            pending = self._reset_pending(vm, boot)
            if boot.ready and not pending:
                return boot.state()
            left = deadline - time.monotonic()
            if left <= 0:
                if pending:
                    return GuestState(ready=False, boot=boot.key, host_keys=boot.host_keys or (), detail="rebooting: waiting for the guest to reset")
                return boot.state()
            if pending:  # the boot's tracker may have ended ready: look again for the reset
                await asyncio.sleep(min(POLL, left))
            else:  # its tracker ends when the boot is ready, or over (stopped, reset)
                await wait_event(boot.changed, left)

    @staticmethod
    def _reset_pending(vm: QemuVm, boot: Boot) -> bool:
        expected = vm.reset_expected
        return expected is not None and expected[0] == boot.key and time.monotonic() < expected[1]

    def _current(self, vm: QemuVm) -> tuple[str, tuple[int | None, int, int] | None]:
        """The name of the VM's current boot (QEMU's pid and its resets), and its reset mark."""
        pid = self.machines.live_pid(vm)
        mark = vm.reset_mark if vm.reset_mark is not None and vm.reset_mark[0] == pid else None
        return f"{pid}.{mark[1] if mark else 0}", mark

    def _boot(self, vm: QemuVm) -> Boot:
        key, mark = self._current(vm)
        boot = vm.boot
        if isinstance(boot, Boot) and boot.key == key:
            return boot
        if isinstance(boot, Boot) and boot.task is not None:
            boot.task.cancel()
        boot = Boot(key=key, serial_offset=mark[2] if mark else _run_offset(vm))
        vm.boot = boot
        boot.task = self.machines.background(self._track(vm, boot), f"ready-{vm.id}")
        return boot

    async def _track(self, vm: QemuVm, boot: Boot) -> None:
        try:
            while vm.boot is boot and not boot.ready:
                if self.machines.live_pid(vm) is None or self.machines.guest_off(vm) or self._current(vm)[0] != boot.key:
                    return  # stopped, or reset: a new boot, followed by a tracker of its own
                try:
                    await self._look(vm, boot)
                except DriverError as exc:  # QMP or the agent broke off (a reset, a stop): look again
                    boot.detail = f"waiting: {exc.message}"
                if boot.ready and self._current(vm)[0] != boot.key:  # the answer may be the next boot's
                    boot.ready = False
                    return
                if boot.ready:
                    log.info("guest of %s is ready (%s)", vm.id, boot.detail)
                    break
                await asyncio.sleep(POLL)
        finally:
            boot.changed.set()

    async def _look(self, vm: QemuVm, boot: Boot) -> None:
        now = time.monotonic()
        if self._reset_pending(vm, boot):
            boot.detail = "rebooting: waiting for the guest to reset"
            return
        self._read_console(vm, boot, now)
        if not boot.agent_port:
            boot.agent_port = await self._agent_port_open(vm)
        if boot.agent_port:
            await self._ask_agent(vm, boot)
            if boot.ready:  # what the guest printed while the agent was asked: a host-key block its boot ended with
                await self._settle_console(vm, boot)
            return
        if boot.first_output is None:
            return
        if boot.login_seen is not None and now - boot.login_seen >= LOGIN_SETTLE:
            boot.ready, boot.detail = True, "no guest agent: the guest shows a login prompt on its serial console"
        elif now - boot.first_output >= AGENTLESS_AFTER:
            boot.ready, boot.detail = True, f"no guest agent: {AGENTLESS_AFTER:g} s since the guest's first serial output"
        else:
            boot.detail = "booting: the guest has not opened its agent port"

    async def _settle_console(self, vm: QemuVm, boot: Boot) -> None:
        """Read the console once more before saying ready, and while a host-key block is begun
        but not complete, up to SETTLE_MAX seconds: the guest's tty drains at the serial line's
        pace, behind what the agent already answers."""
        deadline = time.monotonic() + SETTLE_MAX
        while True:
            self._read_console(vm, boot, time.monotonic())
            if boot.host_keys is not None or BEGIN not in boot.console or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)

    def _read_console(self, vm: QemuVm, boot: Boot, now: float) -> None:
        """New console output of this boot: its first output, its host-key block, a login prompt."""
        looking_for_login = boot.login_seen is None and not boot.agent_port
        if boot.first_output is not None and boot.host_keys is not None and not looking_for_login:
            return
        pos = boot.serial_offset + boot.scanned
        want = CONSOLE_SCAN_MAX - boot.scanned
        if want <= 0:
            return
        try:
            with open(vm.paths.serial_log, "rb") as f:
                if os.fstat(f.fileno()).st_size < boot.serial_offset:  # the log was cut: read it all
                    boot.serial_offset, pos = 0, boot.scanned
                f.seek(pos)
                data = f.read(want)
        except OSError:
            return
        if not data:
            return
        if boot.first_output is None:
            boot.first_output = now
        boot.scanned += len(data)
        if looking_for_login:
            seen = boot.tail + data
            if LOGIN_RE.search(seen):
                boot.login_seen = now
            boot.tail = seen[-128:]
        if boot.host_keys is None:
            boot.console += data
            keys = parse_host_keys(bytes(boot.console))
            if keys is not None:
                boot.host_keys = keys
                boot.console = bytearray()
            elif BEGIN not in boot.console:
                del boot.console[: max(0, len(boot.console) - len(BEGIN))]  # keep what may begin a marker

    async def _agent_port_open(self, vm: QemuVm) -> bool:
        for dev in await self.machines.monitor(vm).execute("query-chardev") or []:
            if dev.get("label") == AGENT_CHARDEV:
                return bool(dev.get("frontend-open"))
        return False

    async def _ask_agent(self, vm: QemuVm, boot: Boot) -> None:
        """The agent answers: is cloud-init there, and done? `cloud-init status` is a Python
        program, ~12 s a run in Debian under TCG (measured), so it is asked only every
        STATUS_EVERY seconds (first STATUS_EVERY after the agent answered); until then,
        cloud-init's result file, which it writes once done (and which `cloud-init status`
        reads), says it."""
        agent = self.machines.agent(vm)
        now = time.monotonic()
        if boot.cloud_init is None:
            found = await agent.exec(["sh", "-c", "command -v cloud-init"], 10.0, 1024, ready_timeout=2.0)
            boot.cloud_init = found.exit_code == 0
            boot.status_checked = now
            if not boot.cloud_init:
                boot.ready, boot.detail = True, "the guest agent answers; no cloud-init"
                return
        result = await agent.exec(["cat", CLOUD_INIT_RESULT], 10.0, 64 << 10, ready_timeout=2.0)
        if result.exit_code == 0:
            errors = _result_errors(result.stdout)
            boot.ready = True
            boot.detail = "the guest agent answers; cloud-init is done" + (f", with {errors} error(s)" if errors else "")
            return
        if now - boot.status_checked >= STATUS_EVERY:
            boot.status_checked = now
            status = _cloud_init_status((await agent.exec(["cloud-init", "status"], 60.0, 4096, ready_timeout=2.0)).stdout)
            if status in CLOUD_INIT_DONE:
                boot.ready, boot.detail = True, f"the guest agent answers; cloud-init status: {status}"
                return
            boot.detail = f"the guest agent answers; cloud-init status: {status or 'unknown'}"
        else:
            boot.detail = "the guest agent answers; cloud-init is running"


def _result_errors(data: bytes) -> int:
    """How many errors cloud-init's result file lists (0 when it cannot be read as one)."""
    try:
        errors = json.loads(data)["v1"]["errors"]
    except (ValueError, KeyError, TypeError):
        return 0
    return len(errors) if isinstance(errors, list) else 0


def _cloud_init_status(stdout: bytes) -> str:
    """`running`, `done`, … from `cloud-init status`'s `status: done` line ("" if none)."""
    for line in stdout.decode("utf-8", errors="replace").splitlines():
        if line.startswith("status:"):
            return line.split(":", 1)[1].strip()[:32]
    return ""


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _run_offset(vm: QemuVm) -> int:
    """Where this QEMU's console output begins in serial.log (recorded in run.json at start)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(vm.paths.run.read_text())["serialOffset"])
    return 0

