"""`vmplane events`, name resolution and the guest commands' errors, against a sim server
(the real-guest side is tests/e2e/test_qemu_cli.py)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from ..support import Server, admin_key, free_port, serve, wait_ready
from .test_cli import cli


async def cli_url_in_env(server: Server, *args: str) -> tuple[int, str, str]:
    """`cli` for commands whose arguments end with `-- …` (where a trailing --url would go)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "VMPLANE_API_KEY": server.admin_key, "VMPLANE_URL": server.url},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def wait_subscribers(server: Server, n: int) -> None:
    for _ in range(200):
        if server.rt.events.subscriber_count >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the CLI never subscribed to the event stream")


async def test_events_follow_filter_and_resume(server: Server) -> None:
    base = server.rt.events.subscriber_count
    follow = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", "events", "--url", server.url, "--json", "--types", "vm.created,vm.running", "--count", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "VMPLANE_API_KEY": server.admin_key},
    )  # fmt: skip
    await wait_subscribers(server, base + 1)
    job = await server.create({"name": "ev-1"})
    vm_id = job["tasks"][0]["resourceId"]
    out, err = await asyncio.wait_for(follow.communicate(), 30)
    assert follow.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["type"], e["resource"]) for e in events] == [("vm.created", vm_id), ("vm.running", vm_id)]
    assert events[0]["id"] < events[1]["id"]

    # resume after an event id: the history comes first, nothing before it; --vm takes a name
    code, out, _ = await cli(server, "events", "--since", str(events[0]["id"]), "--vm", "ev-1", "--count", "1", "--json")
    again = json.loads(out)
    assert code == 0 and again["id"] > events[0]["id"] and again["resource"] == vm_id
    code, out, _ = await cli(server, "events", "--since", "0", "--types", "vm.created", "--resource", vm_id, "--count", "1")
    assert code == 0 and "vm.created" in out and vm_id in out  # one line per event for people

    code, _, err = await cli(server, "events", "--types", "no such type!", "--count", "1")
    assert code == 1 and "types" in err


def test_events_resume_where_they_stopped_when_the_server_restarts(tmp_path: Path) -> None:
    port = free_port()
    url, data, log = f"http://127.0.0.1:{port}", tmp_path / "data", tmp_path / "server.log"
    proc = serve(data, port, log, ["--driver", "sim"])
    follow = None
    try:
        wait_ready(url, proc)
        api = httpx.Client(base_url=url, headers={"X-API-Key": admin_key(data)}, timeout=30)
        assert api.post("/api/v1/vms", json={"name": "before"}).status_code == 202
        follow = subprocess.Popen(
            [sys.executable, "-m", "vmplane.cli.main", "events", "--url", url, "--json", "--since", "0", "--types", "vm.created", "--count", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "VMPLANE_API_KEY": admin_key(data)},
        )  # fmt: skip
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())  # from the history: the stream is open
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = serve(data, port, log, ["--driver", "sim"])
        wait_ready(url, proc)
        assert api.post("/api/v1/vms", json={"name": "after"}).status_code == 202
        out, err = follow.communicate(timeout=30)
        second = json.loads(out)
        assert (first["data"]["name"], second["data"]["name"]) == ("before", "after")  # nothing twice, nothing lost
        assert follow.returncode == 0, err
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        proc.kill()
        proc.wait()


async def test_names_resolve_to_ids_and_ambiguity_is_an_error(server: Server) -> None:
    job = await server.create({"name": "alpha"})
    alpha = job["tasks"][0]["resourceId"]
    code, out, _ = await cli(server, "vm", "get", "alpha", "--json")
    assert code == 0 and json.loads(out)["id"] == alpha
    code, out, _ = await cli(server, "vm", "stop", "alpha", "--json")
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    # a VM whose name is another VM's id: that reference names two VMs
    await server.create({"name": alpha})
    code, _, err = await cli(server, "vm", "get", alpha)
    assert code == 1 and "more than one VM" in err
    code, _, err = await cli(server, "vm", "start", "nobody")
    assert code == 1 and "does not exist" in err


async def test_guest_commands_on_a_simulated_vm_say_why_they_cannot(server: Server) -> None:
    await server.create({"name": "simmy"})
    vm = (await server.client.get("/api/v1/vms", params={"name": "simmy"})).json()["items"][0]
    assert vm["ssh"] is None  # no real guest, no forwarded port
    code, _, err = await cli(server, "vm", "ssh", "simmy")
    assert code == 1 and "no SSH port" in err
    code, _, err = await cli_url_in_env(server, "vm", "exec", "simmy", "--", "true")
    assert code == 1 and "no exec" in err
    code, _, err = await cli(server, "vm", "console", "simmy")
    assert code == 1 and "no console" in err
