"""A small client for qemu-guest-agent: JSON lines on the VM's virtio-serial socket.

The agent may start long after QEMU and answers requests queued before it started, so every
conversation begins with `guest-sync-delimited` carrying a fresh id; replies before the
matching one are discarded. After a timeout the stream is resynchronised the same way.
"""

import asyncio
import base64
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from ...errors import DriverError
from ..base import ExecResult
from .unix import connect_unix

READ_LIMIT = 64 << 20  # guest-exec-status may carry 16 MiB of output per stream, base64'd
SYNC_ATTEMPT = 1.0
COMMAND_TIMEOUT = 10.0
DELIMITER = b"\xff"


class AgentError(DriverError):
    """The agent answered with an error."""


class AgentNotResponding(DriverError):
    pass


class GuestAgent:
    """One VM's guest agent. One request at a time; safe to share between tasks."""

    def __init__(self, vm_id: str, path: Path) -> None:
        self.vm_id = vm_id
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._synced = False
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        self._synced = False
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_ready(self, timeout: float) -> None:
        """Return once the agent answers; AgentNotResponding after `timeout` seconds."""
        async with self._lock:
            await self._sync(timeout)

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = COMMAND_TIMEOUT,
        ready_timeout: float = 30.0, reply: bool = True,
    ) -> Any:
        """Run an agent command and return its result. Waits up to `ready_timeout` for the
        agent first. `reply=False` for commands that answer nothing on success (guest-shutdown)."""
        async with self._lock:
            await self._sync(ready_timeout)
            msg: dict[str, Any] = {"execute": command}
            if arguments is not None:
                msg["arguments"] = arguments
            try:
                await self._send(json.dumps(msg).encode() + b"\n")
                if not reply:
                    self._synced = False  # whatever follows (a reboot, say) is unknown
                    return None
                line = await asyncio.wait_for(self._readline(), timeout)
            except asyncio.CancelledError:
                # cancelled between the request and its reply (a readiness watch ends, a client
                # goes away): the reply may still come, and the next command would read it as
                # its own (a stale guest-exec pid: "Invalid parameter 'pid'"), so resync first
                self._synced = False
                raise
            except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as exc:
                self._synced = False
                if isinstance(exc, asyncio.TimeoutError):
                    raise AgentNotResponding(f"guest agent did not answer {command} in {timeout:g} s", vm_id=self.vm_id) from exc
                await self.close()
                raise AgentNotResponding(f"guest agent connection lost during {command}", vm_id=self.vm_id) from exc
            try:
                data = json.loads(line)
            except ValueError as exc:
                self._synced = False
                raise DriverError(f"guest agent sent garbage in reply to {command}", vm_id=self.vm_id) from exc
            if "error" in data:
                err = data["error"]
                raise AgentError(f"guest agent {command} failed: {err.get('desc', err)}", vm_id=self.vm_id, agent_class=err.get("class"))
            return data.get("return")

    async def exec(self, argv: list[str], timeout: float, max_output: int, *, ready_timeout: float = 30.0) -> ExecResult:
        """Run argv (no shell) through guest-exec, polling guest-exec-status until it exits or
        `timeout` passes. On timeout the guest process is sent SIGKILL, best effort."""
        if not argv:
            raise DriverError("exec needs a command", vm_id=self.vm_id)
        await self.wait_ready(ready_timeout)
        started = time.monotonic()
        try:
            ret = await self.execute("guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
        except AgentError as exc:
            if "Failed to execute child process" in exc.message or "No such file" in exc.message:
                return ExecResult(127, b"", exc.message.encode(), False, False, False, _ms(started))
            raise
        pid = int(ret["pid"])
        deadline = started + timeout
        delay = 0.01
        while True:
            status = await self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                break
            if time.monotonic() >= deadline:
                with contextlib.suppress(DriverError):
                    await self.execute("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]}, timeout=2)
                return ExecResult(None, b"", b"", True, False, False, _ms(started))
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)
        out = base64.b64decode(status.get("out-data", ""))
        err = base64.b64decode(status.get("err-data", ""))
        if "exitcode" in status:
            code = int(status["exitcode"])
        elif "signal" in status:
            code = 128 + int(status["signal"])
        else:
            code = None
        return ExecResult(
            exit_code=code,
            stdout=out[:max_output],
            stderr=err[:max_output],
            timed_out=False,
            stdout_truncated=len(out) > max_output or bool(status.get("out-truncated")),
            stderr_truncated=len(err) > max_output or bool(status.get("err-truncated")),
            duration_ms=_ms(started),
        )

    # -- the wire --------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        await self.close()
        try:
            sock = connect_unix(self.path)
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=READ_LIMIT)
        except OSError as exc:
            raise AgentNotResponding("guest agent socket is not there", vm_id=self.vm_id, reason=exc.strerror) from exc

    async def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def _readline(self) -> bytes:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise EOFError("guest agent socket closed")
        return line

    async def _sync(self, timeout: float) -> None:
        """Resynchronise the stream unless already in sync. Sends a fresh guest-sync-delimited
        every second until the matching reply arrives or `timeout` passes."""
        if self._synced and self._writer is not None and not self._writer.is_closing():
            return
        self._synced = False
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentNotResponding("guest agent not responding", vm_id=self.vm_id, waited=timeout) from last_error
            try:
                await self._connect()
                token = random.randrange(1, 2**31)
                # 0xff first resets the agent's JSON parser after a half-sent request
                await self._send(DELIMITER + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
                if await asyncio.wait_for(self._await_sync(token), min(SYNC_ATTEMPT, remaining)):
                    self._synced = True
                    return
            except TimeoutError as exc:
                last_error = exc
            except (OSError, EOFError, asyncio.IncompleteReadError, AgentNotResponding) as exc:
                last_error = exc
                await self.close()
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def _await_sync(self, token: int) -> bool:
        assert self._reader is not None
        while True:
            await self._reader.readuntil(DELIMITER)  # everything before it is stale
            line = await self._readline()
            try:
                if json.loads(line).get("return") == token:
                    return True
            except (ValueError, AttributeError):
                continue


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
