"""A FastVM client for tests that checks every answer against the contract, and a sim driver
that also offers what a real guest does (exec, console) and fails on demand."""

import asyncio
import datetime
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import schemathesis

from vmplane.api.compat import fastvm
from vmplane.domain.network import Firewall, Nic
from vmplane.drivers.base import ExecResult, ImageInfo
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError

CONTRACT = Path(fastvm.__file__).with_name("openapi.yaml")
SCHEMA = schemathesis.openapi.from_path(CONTRACT)
FAULTY = "faulty-"
"""VMs whose name starts with this fail delete, firewall changes, snapshots and exec"""


def documented(template: str, method: str) -> set[int]:
    return {int(code) for code in SCHEMA[template][method.upper()].definition.raw["responses"]}


class FastVmClient:
    """What a FastVM client does (plain httpx, a base URL, X-API-Key), plus a check of each
    answer: its status is documented for the operation and its body matches the schema."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key} if key else {}, timeout=60)
        self.reached: set[tuple[str, str, int]] = set()

    async def call(self, method: str, template: str, *, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        params = {k: kw.pop(k) for k in list(kw) if f"{{{k}}}" in template}
        r = await self.http.request(method, template.format(**params), headers=headers, **kw)
        self.check(r, method, template)
        return r

    def check(self, r: httpx.Response, method: str, template: str) -> None:
        assert r.status_code in documented(template, method), f"{method} {template}: {r.status_code} is not documented: {r.text}"
        r.read()
        r.elapsed = datetime.timedelta(0)
        SCHEMA[template][method.upper()].validate_response(r)
        if r.status_code >= 400:
            assert set(r.json()) >= {"error"} and r.json()["error"], r.text
        self.reached.add((template, method.upper(), r.status_code))

    async def wait_running(self, vm_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll GET /v1/vms/{id} until `running`, as the contract tells clients to."""
        deadline = time.monotonic() + timeout
        while True:
            vm = (await self.call("GET", "/v1/vms/{id}", id=vm_id)).json()
            if vm["status"] == "running":
                return vm
            assert vm["status"] == "provisioning" and time.monotonic() < deadline, vm
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        await self.http.aclose()


class GuestSimDriver(SimDriver):
    """The sim driver with exec (echoes its argv) and a serial console (an echo), and faults:
    VMs named `faulty-…` fail delete, set_network, snapshot and exec with DriverError."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.capabilities = replace(self.capabilities, exec=True, console=True)
        self._echo: asyncio.AbstractServer | None = None

    def _faulty(self, vm_id: str, what: str) -> None:
        vm = self._vms.get(vm_id)
        if vm is not None and vm.spec.name.startswith(FAULTY):
            raise DriverError(f"simulated failure: {what}", vm_id=vm_id)

    async def delete_vm(self, vm_id: str) -> None:
        self._faulty(vm_id, "delete")
        await super().delete_vm(vm_id)

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        self._faulty(vm_id, "firewall")
        await super().set_network(vm_id, nics, firewall)

    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        self._faulty(vm_id, "snapshot")
        return await super().snapshot_vm(vm_id, snapshot_id)

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        self._faulty(vm_id, "the guest agent did not answer")
        self._vm(vm_id)
        return ExecResult(0, (" ".join(argv) + "\n").encode(), b"", False, False, False, 1)

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._vm(vm_id)
        if self._echo is None:

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            self._echo = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = self._echo.sockets[0].getsockname()[1]
        return await asyncio.open_connection("127.0.0.1", port)

    async def close(self) -> None:
        if self._echo is not None:
            self._echo.close()
        await super().close()
