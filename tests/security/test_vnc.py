"""The graphical console is a door into a guest's keyboard and screen: attack it. Its tokens
are one-time, expire, open only the VNC stream (a serial console's token does not, nor the
reverse); a WebSocket without a token or with a wrong one is refused; another organization's VM
answers 404 for the token and the screenshot; a stopped VM answers 409 naming its state; a node
without a display answers 409 naming what it lacks. QEMU's VNC server listens on no TCP port
(its argv, and QEMU's own `query-vnc`), and its unix socket is reachable by vmplane's user only.

One server with one guest for the module (the guest need not finish booting)."""

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import websockets
from sqlalchemy import update
from websockets.exceptions import InvalidStatus

from vmplane import clock, procfs
from vmplane.services.guest import token_hash
from vmplane.store.tables import console_tokens

from ..support import Server, make_settings, require_qemu, tiny_template
from ..support_display import RFB_VERSION

pytestmark = pytest.mark.slow
shared = pytest.mark.asyncio(loop_scope="module")


class Lab:
    def __init__(self, server: Server, running: str, stopped: str, base: Path) -> None:
        self.server, self.running, self.stopped, self.base = server, running, stopped, base

    def ws_url(self, path: str) -> str:
        return self.server.url.replace("http", "ws") + path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    require_qemu()
    base = tmp_path_factory.mktemp("vnc")
    s = await Server(make_settings(base, driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=5)).start()
    try:
        tpl = await tiny_template(s)
        small = {"templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}}
        job = await s.create({"name": "vnc-on", **small})
        assert job["state"] == "succeeded", job
        r = await s.client.post("/api/v1/vms", json={"name": "vnc-off", "start": False, **small})
        assert r.status_code == 202, r.text
        assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
        yield Lab(s, job["tasks"][0]["resourceId"], r.json()["vmIds"][0], base)
    finally:
        await s.stop()
        for pid, _argv in procfs.processes_mentioning(str(base) + os.sep):  # the guest outlives its server
            procfs.kill(pid)


async def _token(lab: Lab, kind: str = "vnc", vm: str | None = None) -> dict[str, Any]:
    r = await lab.server.client.post(f"/api/v1/vms/{vm or lab.running}/{kind}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def _refused(url: str) -> int:
    """The HTTP status the WebSocket's handshake was refused with."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url, subprotocols=["binary"]):  # type: ignore[list-item]
            pass
    return refused.value.response.status_code


@shared
async def test_a_vnc_token_opens_one_stream_once(lab: Lab) -> None:
    tok = await _token(lab)
    url = lab.ws_url(tok["websocketPath"])
    async with websockets.connect(url, subprotocols=["binary"]) as ws:  # type: ignore[list-item]
        assert await ws.recv() == RFB_VERSION  # QEMU's VNC server, through vmplane
    assert await _refused(url) == 403  # spent
    # a guessed or missing token
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.running}/vnc/ws?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")) == 403
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.running}/vnc/ws")) == 403
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.running}/vnc/ws?token=")) == 403
    # a good token for another VM's path
    tok = await _token(lab)
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.stopped}/vnc/ws?token={tok['token']}")) == 403


@shared
async def test_serial_and_vnc_tokens_do_not_open_each_others_stream(lab: Lab) -> None:
    serial = await _token(lab, "console")
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.running}/vnc/ws?token={serial['token']}")) == 403
    vnc = await _token(lab, "vnc")
    assert await _refused(lab.ws_url(f"/api/v1/vms/{lab.running}/console/ws?token={vnc['token']}")) == 403
    # each still opens its own (a refused try did not spend it)
    async with websockets.connect(lab.ws_url(vnc["websocketPath"]), subprotocols=["binary"]) as ws:  # type: ignore[list-item]
        assert await ws.recv() == RFB_VERSION


@shared
async def test_an_expired_vnc_token_is_refused(lab: Lab) -> None:
    tok = await _token(lab)
    assert clock.rfc3339(clock.now() + 61) > tok["expiresAt"]  # at most 60 s
    async with lab.server.rt.store.write() as conn:  # its minute is over
        await conn.execute(
            update(console_tokens).where(console_tokens.c.token_hash == token_hash(tok["token"], "vnc")).values(expires_at=clock.now() - 1)
        )
    assert await _refused(lab.ws_url(tok["websocketPath"])) == 403


@shared
async def test_another_organizations_vm_is_not_found(lab: Lab) -> None:
    r = await lab.server.client.post("/api/v1/orgs", json={"name": "globex", "owner": "hank"})
    assert r.status_code == 201, r.text
    other = lab.server.client_with(r.json()["ownerKey"])
    try:
        for method, path in (("POST", "vnc"), ("GET", "screenshot")):
            r = await other.request(method, f"/api/v1/vms/{lab.running}/{path}")
            assert r.status_code == 404, (path, r.text)
            # the answer of a VM that does not exist: nothing says it is there for someone else
            assert r.json() == {"error": f"VM {lab.running} does not exist", "code": "not_found", "details": {}}
    finally:
        await other.aclose()
    for bad in ("..%2F..%2Fetc", "vm-nope", "%00"):
        assert (await lab.server.client.get(f"/api/v1/vms/{bad}/screenshot")).status_code == 404, bad


@shared
async def test_a_stopped_vm_answers_409_naming_its_state(lab: Lab) -> None:
    for method, path in (("POST", "vnc"), ("GET", "screenshot")):
        r = await lab.server.client.request(method, f"/api/v1/vms/{lab.stopped}/{path}")
        assert r.status_code == 409, (path, r.text)
        assert "vnc-off is stopped" in r.json()["error"]
        assert "vmplane vm start vnc-off" in r.json()["error"]


@shared
async def test_qemu_serves_vnc_on_its_unix_socket_only(lab: Lab) -> None:
    procs = [argv for _pid, argv in procfs.processes_mentioning(str(lab.base) + os.sep) if "-vnc" in argv]
    assert len(procs) == 1, procs
    argv = procs[0]
    vnc = [argv[i + 1] for i, a in enumerate(argv) if a == "-vnc"]
    assert vnc == ["unix:vnc.sock"], argv  # never `:N` or host:port (TCP 5900+N)
    assert not any(a.startswith(("-vnc=", "vnc=")) or ",websocket" in a for a in argv)
    # QEMU's own word: one VNC server, on a unix socket, no password (only vmplane reaches it)
    node_id, driver = lab.server.rt.registry.items()[0]
    qemu_vm = driver.machines.vm(lab.running)  # type: ignore[attr-defined]
    info = await driver.machines.monitor(qemu_vm).execute("query-vnc")  # type: ignore[attr-defined]
    assert info["enabled"] is True and info["family"] == "unix" and info["auth"] == "none", info
    servers = await driver.machines.monitor(qemu_vm).execute("query-vnc-servers")  # type: ignore[attr-defined]
    assert [s["family"] for srv in servers for s in srv["server"]] == ["unix"], servers


@shared
async def test_the_vnc_socket_is_private_to_vmplanes_user(lab: Lab) -> None:
    sock = next(Path(lab.server.rt.data_dir).rglob("vnc.sock"))
    st = sock.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)  # no group or other bit
    for d in (sock.parent, *sock.parent.parents):  # the path to it is closed to others too
        if d == Path(lab.server.rt.data_dir).parent:
            break
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


async def test_a_node_without_a_display_says_so(server: Any) -> None:
    """The sim driver has no display: 409 naming the capability, nothing pretended."""
    r = await server.client.post("/api/v1/vms", json={"name": "no-screen"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    vm_id = r.json()["vmIds"][0]
    for method, path in (("POST", "vnc"), ("GET", "screenshot")):
        r = await server.client.request(method, f"/api/v1/vms/{vm_id}/{path}")
        assert r.status_code == 409, (path, r.text)
        assert "has no display" in r.json()["error"], r.text
