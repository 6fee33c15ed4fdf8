"""Guest readiness on the sim driver: `guestReady`, the `vm.guest_ready` event once per boot,
the `waitReady` long-poll, and the CLI's `vm create`/`vm start` waiting for it."""

import asyncio
import base64
import struct
import time
from pathlib import Path
from typing import Any

from vmplane.drivers.qemu.readiness import parse_host_keys
from vmplane.drivers.sim import SimDriver
from vmplane.services.readiness import preferred_key

from ..cli.test_cli import cli
from ..support import Server, make_template
from .test_events import collect, sse_events
from .test_tenancy import new_org


def slow_guests(server: Server, seconds: float) -> None:
    """Make the sim's guests take `seconds` to be ready after each boot."""
    for _node, driver in server.rt.registry.items():
        assert isinstance(driver, SimDriver)
        driver.guest_boot = seconds


async def vm_of(server: Server, vm_id: str, **params: Any) -> dict[str, Any]:
    r = await server.client.get(f"/api/v1/vms/{vm_id}", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def ready_events(server: Server, vm_id: str, n: int) -> list[dict[str, Any]]:
    """The first `n` `vm.guest_ready` events of the VM, from the start of the log."""
    events = await collect(sse_events(server.client, {"types": "vm.guest_ready"}, {"Last-Event-ID": "0"}), n)
    return [e for e in events if e["data"]["resource"] == vm_id]


async def test_guest_ready_once_per_boot_and_false_again_on_stop_and_reboot(server: Server) -> None:
    slow_guests(server, 1.0)
    job = await server.create({"name": "rdy"})
    vm_id = job["tasks"][0]["resourceId"]
    vm = await vm_of(server, vm_id)
    assert vm["status"] == "running" and vm["guestReady"] is False  # the guest boots for a second yet
    t0 = time.monotonic()
    vm = await vm_of(server, vm_id, waitReady="30")
    assert vm["guestReady"] is True and time.monotonic() - t0 < 10
    (event,) = await ready_events(server, vm_id, 1)
    assert event["data"]["type"] == "vm.guest_ready"
    assert event["data"]["data"]["guestReady"] is True and event["data"]["data"]["status"] == "running"

    stop = await server.client.post(f"/api/v1/vms/{vm_id}/stop")
    await server.wait_job(stop.json()["jobId"])
    assert (await vm_of(server, vm_id))["guestReady"] is False
    assert (await vm_of(server, vm_id, waitReady="5"))["status"] == "stopped"  # at once: it will not boot by itself

    start = await server.client.post(f"/api/v1/vms/{vm_id}/start")
    await server.wait_job(start.json()["jobId"])
    assert (await vm_of(server, vm_id))["guestReady"] is False
    assert (await vm_of(server, vm_id, waitReady="30"))["guestReady"] is True

    reboot = await server.client.post(f"/api/v1/vms/{vm_id}/reboot")
    await server.wait_job(reboot.json()["jobId"])
    assert (await vm_of(server, vm_id))["guestReady"] is False
    assert (await vm_of(server, vm_id, waitReady="30"))["guestReady"] is True
    events = await ready_events(server, vm_id, 3)
    assert len(events) == 3  # one per boot: create, start, reboot
    await asyncio.sleep(1.5)  # nothing more comes for the same boot
    listed = (await server.client.get("/api/v1/vms")).json()["items"]
    assert [v["guestReady"] for v in listed] == [True]


async def test_wait_ready_answers_at_once_when_the_vm_stops_and_at_the_timeout(server: Server) -> None:
    slow_guests(server, 600.0)
    job = await server.create({"name": "slow"})
    vm_id = job["tasks"][0]["resourceId"]
    t0 = time.monotonic()
    vm = await vm_of(server, vm_id, waitReady="1.5")
    assert vm["guestReady"] is False and vm["status"] == "running" and 1.4 <= time.monotonic() - t0 < 10

    waiting = asyncio.create_task(vm_of(server, vm_id, waitReady="60"))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    t0 = time.monotonic()
    stop = await server.client.post(f"/api/v1/vms/{vm_id}/stop")
    vm = await asyncio.wait_for(waiting, 20)
    assert vm["status"] in ("stopping", "stopped") and vm["guestReady"] is False and time.monotonic() - t0 < 10
    await server.wait_job(stop.json()["jobId"])


async def test_many_waiters_hold_no_connection(server_factory: Any, database_url: str) -> None:
    """Waiters wait on the event bus: 40 of them on one VM (more than the store's connections)
    while other requests are answered at once, and all answer when the guest is ready."""
    server = await server_factory(database_url=database_url)
    slow_guests(server, 4.0)
    job = await server.create({"name": "many"})
    vm_id = job["tasks"][0]["resourceId"]
    waiters = [asyncio.create_task(vm_of(server, vm_id, waitReady="60")) for _ in range(40)]
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    assert (await server.client.get("/api/v1/vms")).status_code == 200 and time.monotonic() - t0 < 5
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 60)
    assert all(a["guestReady"] for a in answers)


async def test_wait_ready_checks_its_input_and_hides_other_tenants(server: Server) -> None:
    job = await server.create({"name": "chk"})
    vm_id = job["tasks"][0]["resourceId"]
    for bad in ("abc", "-1", "301", "nan", "1e9"):
        r = await server.client.get(f"/api/v1/vms/{vm_id}", params={"waitReady": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["details"]["field"] == "waitReady" and "waitReady" in r.json()["error"]
    _org, other = await new_org(server)
    async with other:
        r = await other.get(f"/api/v1/vms/{vm_id}", params={"waitReady": "5"})
        assert r.status_code == 404


async def test_cli_create_and_start_wait_for_the_guest(server: Server, tmp_path: Path) -> None:
    slow_guests(server, 2.0)
    await make_template(server, tmp_path, "img")
    code, out, err = await cli(server, "vm", "create", "cli-rdy", "--template", "img")
    assert code == 0, err
    assert "waiting for the guest of cli-rdy to be ready" in err and "cli-rdy: guest ready" in err
    (vm,) = (await server.client.get("/api/v1/vms", params={"name": "cli-rdy"})).json()["items"]
    assert vm["guestReady"] is True  # the CLI came back only once it was
    code, out, err = await cli(server, "vm", "stop", "cli-rdy")
    assert code == 0 and "guest" not in err
    code, out, err = await cli(server, "vm", "start", "cli-rdy")
    assert code == 0 and "cli-rdy: guest ready" in err
    assert (await vm_of(server, vm["id"]))["guestReady"] is True
    code, out, err = await cli(server, "vm", "create", "cli-nowait", "--no-wait")
    assert code == 0 and out.strip().startswith("job-") and "guest" not in err
    code, out, err = await cli(server, "vm", "create", "cli-cold", "--template", "img", "--no-start")
    assert code == 0 and "guest" not in err
    # an empty disk (no template) boots nothing: the CLI says so and does not wait for a guest
    code, out, err = await cli(server, "vm", "create", "cli-blank")
    assert code == 0 and "an empty disk" in err and "waiting for the guest" not in err, err
    (blank,) = (await server.client.get("/api/v1/vms", params={"name": "cli-blank"})).json()["items"]
    assert blank["blank"] is True and vm["blank"] is False


def test_host_keys_come_from_the_first_block_each_checked() -> None:
    ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICVvVGXu985lMWeRRX+1ECNQDEu43gTzJulZGjzovXqc"
    ecdsa_blob = base64.b64encode(struct.pack(">I", 19) + b"ecdsa-sha2-nistp256" + b"\0" * 40).decode()
    lying = base64.b64encode(struct.pack(">I", 7) + b"ssh-rsa" + b"\0" * 40).decode()  # an rsa blob called ed25519
    console = (
        b"[  5.1] booting\r\n-----BEGIN SSH HOST KEY KEYS-----\r\n"
        + f"{ed} root@deb\r\n".encode()
        + f"ecdsa-sha2-nistp256 {ecdsa_blob} root@deb\r\n".encode()
        + f"ssh-ed25519 {lying}\r\n".encode()
        + b"ssh-ed25519 not-base64!! x\r\n$(reboot) ; rm -rf /\r\n"
        + b"-----END SSH HOST KEY KEYS-----\r\n"
        + b"-----BEGIN SSH HOST KEY KEYS-----\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
        + b"-----END SSH HOST KEY KEYS-----\r\n"
    )
    keys = parse_host_keys(console)
    assert keys == (ed, f"ecdsa-sha2-nistp256 {ecdsa_blob}")  # comments dropped; the second block ignored
    assert preferred_key(keys) == ed and preferred_key(()) is None
    assert parse_host_keys(b"-----BEGIN SSH HOST KEY KEYS-----\r\n" + ed.encode()) is None  # not complete yet
    assert parse_host_keys(b"nothing here") is None
