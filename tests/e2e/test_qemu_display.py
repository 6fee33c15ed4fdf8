"""The graphical console on a real guest (tiny-linux, TCG): through `POST /vms/{id}/vnc` and
its WebSocket, QEMU's VNC server answers the RFB handshake (security type None, a sane
screen size) and sends a screen whose pixels are not all one colour (the guest's shell on
tty1); `GET /vms/{id}/screenshot` is a PNG of that screen; `vmplane vm display` prints the
page's address; and the same VNC stream and screenshot reach the control plane from a node
agent (the agent's face and the `remote` driver, around the same guest).

One server and one guest for the module."""

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import uvicorn
import websockets

from vmplane import procfs
from vmplane.agent.app import AgentState, create_agent_app
from vmplane.agent.images import ImageStore
from vmplane.drivers.remote import RemoteDriver
from vmplane.drivers.remote_wire import CONTROL_KEY_PREFIX, digest

from ..support import Server, free_port, make_settings, require_qemu, tiny_template
from ..support_agent import LOOPBACK
from ..support_display import RFB_VERSION, RfbStream, framebuffer, handshake, png_pixels
from .test_qemu_cli import cli_env, run_cli

pytestmark = pytest.mark.slow
shared = pytest.mark.asyncio(loop_scope="module")

BOOT_WAIT = 240.0


class Guest:
    def __init__(self, server: Server, vm_id: str, base: Path) -> None:
        self.server, self.vm_id, self.base = server, vm_id, base


async def wait_booted(s: Server, vm_id: str) -> None:
    """Until the guest's boot is complete (its shell on tty1 is up then)."""
    deadline = asyncio.get_running_loop().time() + BOOT_WAIT
    while True:
        r = await s.client.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/run/vmplane/boot-complete"], "timeoutSec": 5})
        if r.status_code == 200 and r.json()["exitCode"] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, r.text
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guest(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Guest]:
    require_qemu()
    base = tmp_path_factory.mktemp("display")
    s = await Server(make_settings(base, driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=5)).start()
    try:
        tpl = await tiny_template(s)
        job = await s.create({"name": "screen", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
        assert job["state"] == "succeeded", job
        vm_id = job["tasks"][0]["resourceId"]
        await wait_booted(s, vm_id)
        yield Guest(s, vm_id, base)
    finally:
        await s.stop()
        for pid, _argv in procfs.processes_mentioning(str(base) + os.sep):  # the guest outlives its server
            procfs.kill(pid)


async def open_vnc(s: Server, vm_id: str) -> websockets.ClientConnection:
    r = await s.client.post(f"/api/v1/vms/{vm_id}/vnc")
    assert r.status_code == 200, r.text
    tok = r.json()
    assert tok["websocketPath"] == f"/api/v1/vms/{vm_id}/vnc/ws?token={tok['token']}"
    assert r.headers["cache-control"] == "no-store"
    ws = await websockets.connect(s.url.replace("http", "ws") + tok["websocketPath"], subprotocols=["binary"], max_size=None)  # type: ignore[list-item]
    assert ws.subprotocol == "binary"  # what noVNC asks for
    return ws


@shared
async def test_the_vnc_websocket_speaks_rfb_with_the_guests_screen(guest: Guest) -> None:
    ws = await open_vnc(guest.server, guest.vm_id)
    async with ws:
        s = RfbStream(ws)
        version, types, init = await handshake(s)
        assert version.startswith(b"RFB 003.")
        assert types == [1]  # None only: no password, only vmplane reaches the socket
        assert 320 <= init.width <= 4096 and 200 <= init.height <= 4096, init
        assert init.bits_per_pixel in (16, 32)
        pixels = await framebuffer(s, init)
        assert len(pixels) == init.width * init.height
        colours = set(pixels)
        assert len(colours) > 1, "the screen is one colour"
        # text on a dark screen: most pixels are the background, some are glyphs
        background = max(colours, key=pixels.count)
        assert pixels.count(background) < len(pixels) * 0.995


@shared
async def test_the_screenshot_is_a_png_of_the_screen(guest: Guest) -> None:
    c = guest.server.client
    r = await c.get(f"/api/v1/vms/{guest.vm_id}/screenshot")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    w, h, pixels = png_pixels(r.content)
    assert 320 <= w <= 4096 and 200 <= h <= 4096
    assert len(set(pixels)) > 1, "the screenshot is one colour"
    vm_dir = Path(guest.server.rt.data_dir)
    assert not list(vm_dir.rglob("screen.png")), "the dump was left behind"


@shared
async def test_vm_display_prints_the_display_page(guest: Guest, tmp_path: Path) -> None:
    code, out, err = await run_cli(cli_env(guest.server, tmp_path), "vm", "display", "screen")
    assert code == 0, err
    assert out.strip() == f"{guest.server.url}/ui/#/vms/{guest.vm_id}/display"


@shared
async def test_a_node_agent_bridges_vnc_and_screenshots(guest: Guest) -> None:
    """The agent's face around the node's qemu driver, and the `remote` driver the control
    plane would use for it: RFB and a PNG come through the wire (no second guest)."""
    node_id, driver = guest.server.rt.registry.items()[0]
    key = CONTROL_KEY_PREFIX + "display-test-key-0123456789"
    data = guest.base / "agent"
    data.mkdir()
    state = AgentState(
        driver=driver, data_dir=data, images=ImageStore(data / "images", driver, LOOPBACK), key_digest=digest(key), node_id=node_id
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_agent_app(state), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        remote = RemoteDriver(node_id, f"http://127.0.0.1:{port}", key, driver.capabilities, serves_templates=False)
        reader, writer = await remote.open_vnc(guest.vm_id)
        try:
            assert await asyncio.wait_for(reader.readexactly(12), 10) == RFB_VERSION
            writer.write(RFB_VERSION)
            (count,) = await asyncio.wait_for(reader.readexactly(1), 10)
            assert list(await reader.readexactly(count)) == [1]
            writer.write(b"\x01")
            assert struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), 10)) == (0,)
            writer.write(b"\x01")
            w, h = struct.unpack(">HH", await asyncio.wait_for(reader.readexactly(4), 10))
            assert 320 <= w <= 4096 and 200 <= h <= 4096
        finally:
            writer.close()
        png = await remote.screenshot(guest.vm_id, 16 << 20)
        assert len(set(png_pixels(png)[2])) > 1
        await remote.close()
    finally:
        server.should_exit = True
        await task
