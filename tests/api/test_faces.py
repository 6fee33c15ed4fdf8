"""Any face at the root of a listener of its own: the same application seen from the face's
prefix (credentials, errors and links the same as on the main listener)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from vmplane.api.faces import FACES, FaceListener, listener_app

from ..support import Server, free_port
from ..support_fastvm import GuestSimDriver


def test_paths_get_the_prefix_unless_they_carry_it_or_belong_to_the_root() -> None:
    native = FaceListener(None, FACES["native"])  # type: ignore[arg-type]
    assert native.rewrite("/vms") == "/api/v1/vms"
    assert native.rewrite("/api/v1/jobs/job-1") == "/api/v1/jobs/job-1"  # a Location header it handed out
    assert native.rewrite("/healthz") == "/healthz" and native.rewrite("/openapi.json") == "/openapi.json"
    fastvm = FaceListener(None, FACES["fastvm"])  # type: ignore[arg-type]
    assert fastvm.rewrite("/healthz") == "/compat/fastvm/healthz"  # the contract has its own
    assert fastvm.rewrite("/") == "/compat/fastvm"
    assert fastvm.rewrite("/compat/fastvmx") == "/compat/fastvm/compat/fastvmx"
    with pytest.raises(ValueError, match="unknown face 'nope'; known: native, fastvm"):
        listener_app(None, "nope")  # type: ignore[arg-type]


async def serve_face(server: Server, name: str, as_key: str | None = None) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    app = listener_app(server.app, name, as_key)
    face = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(face.serve())
    while not face.started:
        await asyncio.sleep(0.01)
    return face, task, f"http://127.0.0.1:{port}"


@pytest.fixture
async def faces(server_factory: Any) -> AsyncIterator[tuple[Server, dict[str, str]]]:
    s = await server_factory(nodes=[("node-1", GuestSimDriver(hostname="node-1", latency=0.005))])
    running = {name: await serve_face(s, name) for name in ("native", "fastvm")}
    yield s, {name: url for name, (_, _, url) in running.items()}
    for face, task, _ in running.values():
        face.should_exit = True
        await task


async def test_each_face_at_the_root_of_its_own_listener(faces: tuple[Server, dict[str, str]]) -> None:
    s, urls = faces
    key = {"X-API-Key": s.admin_key}
    async with httpx.AsyncClient(base_url=urls["fastvm"], headers=key) as fv, httpx.AsyncClient(base_url=urls["native"], headers=key) as nat:
        r = await fv.post("/v1/vms", json={"machineType": "c1m2", "name": "rooted"})
        assert r.status_code == 201, r.text
        vm = r.json()
        assert [v["id"] for v in (await fv.get("/v1/vms")).json()] == [vm["id"]]
        assert (await fv.get("/healthz")).json() == {"status": "ok"}
        assert (await fv.get("/api/v1/vms")).status_code == 404  # only its own face
        assert (await fv.get("/v1/vms", headers={"X-API-Key": "wrong"})).json() == {"error": "unknown API key"}

        # the native face at its root, with the Location it hands out usable as it is
        assert [v["uuid"] for v in (await nat.get("/vms")).json()["items"]] == [vm["id"]]
        r = await nat.post(f"/vms/{vm['id']}/stop")
        assert r.status_code == 202 and r.headers["location"].startswith("/api/v1/jobs/")
        job = (await nat.get(r.headers["location"])).json()
        assert job["id"] == r.json()["jobId"]
        assert (await nat.get("/readyz")).status_code == 200 and (await nat.get("/openapi.json")).status_code == 200
        assert (await nat.get("/compat/fastvm/v1/vms")).status_code == 404

        # both listeners are one server: what one did, the other sees
        await s.wait_job(job["id"])
        assert (await s.client.get(f"/compat/fastvm/v1/vms/{vm['id']}")).json()["status"] == "stopped"
        r = await s.client.post(f"/api/v1/vms/{vm['id']}/start")
        await s.wait_job(r.json()["jobId"])

        # the console's websocketPath works on the face's listener as handed out
        tok = (await fv.post(f"/v1/vms/{vm['id']}/console-token")).json()
        assert tok["websocketPath"] == f"/compat/fastvm/v1/vms/{vm['id']}/console/ws"
        async with websockets.connect(urls["fastvm"].replace("http", "ws") + tok["websocketPath"] + f"?session={tok['token']}") as ws:
            await ws.send(b"ping")
            assert await ws.recv() == b"ping"
