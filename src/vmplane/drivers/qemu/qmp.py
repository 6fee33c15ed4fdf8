"""One QMP connection to a VM's QEMU (`qemu.qmp`), with a watch for guest power-off.

QEMU's QMP socket takes one client at a time: a driver keeps one `Monitor` per running VM
and closes it when the VM stops or the driver closes.
"""

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from ...errors import DriverError
from .unix import connect_unix

log = logging.getLogger("vmplane.drivers.qemu")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0


class Monitor:
    """QMP to one VM. `guest_off` turns True when the guest powers itself off (QEMU runs
    with -no-shutdown, so it then waits paused in the `shutdown` state)."""

    def __init__(
        self, vm_id: str, path: Path, on_guest_poweroff: Callable[[], None] | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.vm_id = vm_id
        self.path = path
        self.guest_off = False
        self._on_guest_poweroff = on_guest_poweroff
        self._on_reset = on_reset
        """called when the machine resets (a guest reboot, system_reset): a new boot begins"""
        self._client: QMPClient | None = None
        self._fd_sock: socket.socket | None = None
        self._watch: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.runstate == Runstate.RUNNING

    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect if not connected. Raises DriverError("QMP connect failed")."""
        async with self._connect_lock:
            if self.connected:
                return
            await self._drop()
            client = QMPClient(self.vm_id)
            listener = EventListener(names=("SHUTDOWN", "RESET"))
            client.register_listener(listener)
            try:
                sock = connect_unix(self.path)
                # our own handle on the connection, to send it descriptors (`pass_file`):
                # qemu.qmp's send_fd_scm reaches for the socket inside the transport, which
                # uvloop (vmplane serve) does not expose
                fd_sock = socket.socket(fileno=os.dup(sock.fileno()))
                try:
                    await asyncio.wait_for(client.connect(sock), timeout)
                except BaseException:
                    fd_sock.close()
                    raise
            except (TimeoutError, OSError, QMPError, EOFError) as exc:
                with contextlib.suppress(Exception):
                    await client.disconnect()
                raise DriverError("QMP connect failed", vm_id=self.vm_id, reason=str(exc) or type(exc).__name__) from exc
            self._client = client
            self._fd_sock = fd_sock
            self._watch = asyncio.create_task(self._watch_events(listener), name=f"qmp-events-{self.vm_id}")

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run a QMP command and return its result; DriverError on any failure."""
        await self.connect()
        assert self._client is not None
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            raise DriverError(f"QMP {command} failed: {exc.error.error.desc}", vm_id=self.vm_id) from exc
        except (TimeoutError, QMPError, EOFError, OSError) as exc:
            await self._drop()
            raise DriverError(f"QMP {command} failed: connection lost", vm_id=self.vm_id) from exc

    async def pass_file(self, fd: int, what: str) -> int:
        """Hand QEMU an open file (SCM_RIGHTS, then `add-fd`); returns its fd set's id, which
        QEMU opens as `/dev/fdset/<id>` (and `remove-fd` forgets). `fd` stays ours to close.
        This is how a confined QEMU, which cannot open files by path, gets new ones."""
        await self.connect()
        assert self._fd_sock is not None
        try:
            socket.send_fds(self._fd_sock, [b" "], [fd])  # (QMP reads the space as whitespace)
        except OSError as exc:
            await self._drop()
            raise DriverError(f"cannot pass {what} to QEMU: {exc.strerror}", vm_id=self.vm_id) from exc
        result = await self.execute("add-fd", {"opaque": what})
        return int(result["fdset-id"])

    async def status(self, timeout: float = COMMAND_TIMEOUT) -> str:
        """QEMU's run state: running, paused, shutdown, ..."""
        result = await self.execute("query-status", timeout=timeout)
        status = str(result.get("status", "unknown"))
        if status == "shutdown":
            self.guest_off = True
        return status

    async def quit(self, timeout: float = 5.0) -> None:
        """Ask QEMU to exit. The connection ends with it (qemu.qmp then sees EOFError);
        failures are swallowed: the caller checks the process and kills it if needed."""
        try:
            await self.connect(timeout=timeout)
            assert self._client is not None
            await asyncio.wait_for(self._client.execute("quit"), timeout)
        except (TimeoutError, DriverError, QMPError, EOFError, OSError):
            pass
        await self._drop()

    async def close(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        fd_sock, self._fd_sock = self._fd_sock, None
        if fd_sock is not None:
            fd_sock.close()
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
        if client is not None:
            with contextlib.suppress(Exception):  # EOFError after quit, OSError if QEMU died
                await client.disconnect()

    async def _watch_events(self, listener: EventListener) -> None:
        async for event in listener:
            data = cast(dict[str, Any], event.get("data") or {})
            if event.get("event") == "SHUTDOWN" and data.get("guest"):
                self.guest_off = True
                log.info("guest of %s powered off (%s)", self.vm_id, data.get("reason"))
                if self._on_guest_poweroff is not None:
                    self._on_guest_poweroff()
            elif event.get("event") == "RESET" and self._on_reset is not None:
                self._on_reset()
