"""The console's resize message is the one path from a browser's WebSocket frame to a command
in the guest (`stty -F /dev/ttyS0 rows R cols C`, run by the guest agent). Attack it: every
frame that is not exactly {"type": "resize", "rows": int, "cols": int} in range is answered with
an error naming the field and runs nothing; a good one runs that argv (a list, no shell)."""

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from vmplane.drivers.base import ExecResult

from ..support import Server
from ..support_fastvm import GuestSimDriver

PROTOCOL = "vmplane.console"


class RecordingDriver(GuestSimDriver):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.execs: list[list[str]] = []
        self.slow = 0.0
        self.running = self.most_at_once = 0

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        self.execs.append(list(argv))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.slow)
            return await super().exec_vm(vm_id, argv, timeout, max_output)
        finally:
            self.running -= 1


async def _console(s: Server, vm_id: str, subprotocols: list[str] | None) -> Any:
    r = await s.client.post(f"/api/v1/vms/{vm_id}/console")
    assert r.status_code == 200, r.text
    url = s.url.replace("http", "ws") + r.json()["websocketPath"]
    return websockets.connect(url, subprotocols=subprotocols)  # type: ignore[arg-type]


HOSTILE: list[tuple[str, str | None]] = [
    ('{"type": "resize", "rows": "24; reboot", "cols": 80}', "rows"),
    ('{"type": "resize", "rows": "24", "cols": 80}', "rows"),
    ('{"type": "resize", "rows": 24, "cols": "80 && reboot"}', "cols"),
    ('{"type": "resize", "rows": -1, "cols": 80}', "rows"),
    ('{"type": "resize", "rows": 0, "cols": 80}', "rows"),
    ('{"type": "resize", "rows": 24, "cols": 1000000000000}', "cols"),
    ('{"type": "resize", "rows": 24.5, "cols": 80}', "rows"),
    ('{"type": "resize", "rows": true, "cols": 80}', "rows"),
    ('{"type": "resize", "rows": [24], "cols": 80}', "rows"),
    ('{"type": "resize", "rows": 24}', "cols"),
    ('{"type": "resize", "rows": 24, "cols": 80, "argv": ["reboot"]}', "argv"),
    ('{"type": "exec", "rows": 24, "cols": 80}', "type"),
    ('{"rows": 24, "cols": 80}', "type"),
    ("[24, 80]", None),
    ("not json", None),
    ('{"type": "resize", "rows": 24, "cols": 80, "pad": "' + "x" * 300 + '"}', None),
]


async def test_hostile_resize_messages_run_nothing(server_factory: Any) -> None:
    driver = RecordingDriver(hostname="node-1", cpu=4, ram_mb=8192, disk_gb=200, latency=0.001)
    s = await server_factory(nodes=[("node-1", driver)])
    r = await s.client.post("/api/v1/vms", json={"name": "tty"})
    assert r.status_code == 202, r.text
    vm_id = r.json()["vmIds"][0]
    deadline = time.monotonic() + 20
    while (await s.client.get(f"/api/v1/vms/{vm_id}")).json()["status"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    async with await _console(s, vm_id, [PROTOCOL]) as ws:
        assert ws.subprotocol == PROTOCOL
        for frame, field in HOSTILE:
            await ws.send(frame)
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert answer["type"] == "error", (frame, answer)
            assert answer.get("field") == field, (frame, answer)
        assert driver.execs == []  # nothing ran
        # keys still flow (binary frames), and the console is not broken by what came before
        await ws.send(b"keys\r")
        assert await asyncio.wait_for(ws.recv(), 5) == b"keys\r"
        # the one good shape runs exactly this argv
        await ws.send(json.dumps({"type": "resize", "rows": 24, "cols": 80}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "resized", "rows": 24, "cols": 80}
        assert driver.execs == [["stty", "-F", "/dev/ttyS0", "rows", "24", "cols", "80"]]
        # a flood: one command at a time, the sizes that came meanwhile coalesced to the newest
        driver.slow = 0.2
        for cols in range(100, 150):
            await ws.send(json.dumps({"type": "resize", "rows": 30, "cols": cols}))
        answers = []
        while not answers or answers[-1] != {"type": "resized", "rows": 30, "cols": 149}:
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        assert 2 <= len(driver.execs) <= 3, driver.execs  # the first, maybe one caught mid-way, the newest
        assert driver.execs[-1][-1] == "149" and driver.most_at_once == 1
        driver.execs[1:] = []

    # a client that did not choose the protocol: every frame is keys, nothing is run
    async with await _console(s, vm_id, None) as ws:
        assert ws.subprotocol is None
        await ws.send('{"type": "resize", "rows": 30, "cols": 90}')
        assert await asyncio.wait_for(ws.recv(), 5) == b'{"type": "resize", "rows": 30, "cols": 90}'
    assert len(driver.execs) == 1


@pytest.mark.parametrize("rows,cols", [(2, 2), (500, 1000)])
def test_the_size_limits_are_inclusive(rows: int, cols: int) -> None:
    from vmplane.wsconsole import parse_control

    size = parse_control(json.dumps({"type": "resize", "rows": rows, "cols": cols}))
    assert (size.rows, size.cols) == (rows, cols)
