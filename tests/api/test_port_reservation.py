"""Forwarded host ports are the store's (one VM's each) and a start never fails because
another program took a stopped VM's port: it is re-picked, the VM and the store show the new
one and `vm.port_changed` says so. Driver-independent, so on sim (the real guest's side is
tests/e2e/test_qemu_ports.py). A VM that is not running has no console: 409 naming its state."""

import socket
from typing import Any

from vmplane.errors import DriverError
from vmplane.services.vms import AUTO_PORTS, port_is_free
from vmplane.store import ports as ports_q

from ..support import Server
from .test_events import collect, sse_events

PORT = 18110
"""in this engineer's range: the port a test VM asks for and a stranger then takes"""


def listener(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


async def vm_of(server: Server, name: str) -> dict[str, Any]:
    return (await server.client.get("/api/v1/vms", params={"name": name})).json()["items"][0]


async def power(server: Server, vm_id: str, action: str) -> dict[str, Any]:
    r = await server.client.post(f"/api/v1/vms/{vm_id}/{action}")
    assert r.status_code == 202, r.text
    return await server.wait_job(r.json()["jobId"])


async def held(server: Server, vm_id: str) -> set[tuple[int, str]]:
    async with server.rt.store.read() as conn:
        return await ports_q.ports_of(conn, vm_id)


async def test_two_vms_never_hold_one_host_port(server_factory: Any, database_url: str) -> None:
    server = await server_factory(database_url=database_url)
    job = await server.create({"name": "p-one", "expose": [{"port": 80, "hostPort": PORT}]})
    assert job["state"] == "succeeded", job
    one = await vm_of(server, "p-one")
    r = await server.client.post("/api/v1/vms", json={"name": "p-two", "expose": [{"port": 80, "hostPort": PORT}]})
    assert r.status_code == 409 and "expose" in r.text and str(PORT) in r.json()["error"], r.text
    assert (await server.client.get("/api/v1/vms", params={"name": "p-two"})).json()["items"] == [], r.text  # nothing made
    # ports picked by vmplane: each VM its own, none the first VM's
    job = await server.create([{"name": f"p-auto-{i}", "expose": [{"port": 22}, {"port": 80}]} for i in range(3)])
    assert job["state"] == "succeeded", job
    ports = [e["hostPort"] for i in range(3) for e in (await vm_of(server, f"p-auto-{i}"))["expose"]]
    assert len(set(ports)) == 6 and PORT not in ports and all(p in AUTO_PORTS for p in ports)
    assert await held(server, one["id"]) == {(PORT, "tcp")}


async def test_a_start_re_picks_a_port_another_program_took(server_factory: Any, database_url: str) -> None:
    server = await server_factory(database_url=database_url)
    job = await server.create({"name": "p-web", "expose": [{"port": 80, "hostPort": PORT}, {"port": 53, "hostPort": PORT + 1, "protocol": "udp"}]})
    assert job["state"] == "succeeded", job
    web = await vm_of(server, "p-web")
    assert (await power(server, web["id"], "stop"))["state"] == "succeeded"
    # the port vmplane would pick first is another (stopped) VM's: the re-pick must skip it
    first = next(p for p in AUTO_PORTS if port_is_free(p, "tcp"))
    job = await server.create({"name": "p-other", "expose": [{"port": 80, "hostPort": first}], "start": False})
    assert job["state"] == "succeeded", job
    other = await vm_of(server, "p-other")

    with listener(PORT):  # a stranger takes web's TCP port while it is stopped
        job = await power(server, web["id"], "start")
        assert job["state"] == "succeeded", job
        web = await vm_of(server, "p-web")
        assert web["status"] == "running"
        tcp = next(e for e in web["expose"] if e["protocol"] == "tcp")
        udp = next(e for e in web["expose"] if e["protocol"] == "udp")
        new = tcp["hostPort"]
        assert new != PORT and new != first and new in AUTO_PORTS
        assert udp["hostPort"] == PORT + 1  # not taken: kept
        assert await held(server, web["id"]) == {(new, "tcp"), (PORT + 1, "udp")}
        assert await held(server, other["id"]) == {(first, "tcp")}
        # the node forwards from the new port too (what its next boot binds)
        node_spec = server.rt.registry.driver(web["nodeId"])._vms[web["id"]].spec  # type: ignore[attr-defined]
        assert [e["hostPort"] for e in node_spec.extra["expose"]] == [new, PORT + 1]
        # said in the start task's log and as an event
        task = job["tasks"][0]
        log = (await server.client.get(f"/api/v1/jobs/{job['id']}/tasks/{task['id']}")).json()["log"]
        assert any(f"host port {PORT} was taken by another program: guest port 80/tcp is now forwarded from {new}" in line for line in log), log
        events = await collect(sse_events(server.client, {"types": "vm.port_changed"}, {"Last-Event-ID": "0"}), 1)
        data = events[0]["data"]
        assert data["resource"] == web["id"] and data["type"] == "vm.port_changed"
        body = data["data"]
        assert (body["previousHostPort"], body["hostPort"], body["guestPort"], body["protocol"]) == (PORT, new, 80, "tcp")
        assert "taken by another program" in body["reason"]

        # stopped and started again with the stranger still there: nothing moves any more
        assert (await power(server, web["id"], "stop"))["state"] == "succeeded"
        assert (await power(server, web["id"], "start"))["state"] == "succeeded"
        assert [e["hostPort"] for e in (await vm_of(server, "p-web"))["expose"]] == [new, PORT + 1]


async def test_the_console_refuses_a_vm_that_is_not_running_naming_its_state(server: Server) -> None:
    job = await server.create({"name": "p-off", "start": False})
    assert job["state"] == "succeeded", job
    off = await vm_of(server, "p-off")
    r = await server.client.post(f"/api/v1/vms/{off['id']}/console")
    assert r.status_code == 409, r.text
    assert "p-off is stopped; start it with `vmplane vm start p-off`" in r.json()["error"]


async def test_a_port_taken_between_the_look_and_the_bind_is_re_picked_once_more(server: Server) -> None:
    job = await server.create({"name": "p-race", "expose": [{"port": 80, "hostPort": PORT}], "start": False})
    assert job["state"] == "succeeded", job
    vm = await vm_of(server, "p-race")
    driver = server.rt.registry.driver(vm["nodeId"])
    real_start = driver.start_vm
    stranger: list[socket.socket] = []

    async def start_vm(vm_id: str) -> None:
        if not stranger:  # the port was free when looked at; someone binds it just before QEMU does
            stranger.append(listener(PORT))
            raise DriverError(f"QEMU exited unexpectedly: Could not set up host forwarding rule 'tcp:127.0.0.1:{PORT}-:80'", vm_id=vm_id)
        await real_start(vm_id)

    driver.start_vm = start_vm  # type: ignore[method-assign]
    try:
        job = await power(server, vm["id"], "start")
        assert job["state"] == "succeeded", job
        moved = await vm_of(server, "p-race")
        assert moved["status"] == "running" and moved["expose"][0]["hostPort"] not in (PORT, None)
        assert await held(server, vm["id"]) == {(moved["expose"][0]["hostPort"], "tcp")}
    finally:
        driver.start_vm = real_start  # type: ignore[method-assign]
        for s in stranger:
            s.close()
