"""The `vmplane` client commands against a real server."""

import asyncio
import json
import os
import sys
from typing import Any

from ..support import Server


async def cli(server: Server, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, "--url", server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "VMPLANE_API_KEY": server.admin_key},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_vm_lifecycle_through_the_cli(server: Server) -> None:
    code, out, _ = await cli(server, "vm", "create", "cli-1", "cli-2", "--cpu", "2", "--tag", "t1", "--json")
    assert code == 0
    job = json.loads(out)
    assert job["state"] == "succeeded" and len(job["tasks"]) == 2
    code, out, _ = await cli(server, "vm", "list", "--json")
    vms = {v["name"]: v for v in json.loads(out)}
    assert set(vms) == {"cli-1", "cli-2"} and vms["cli-1"]["resources"]["cpu"] == 2
    vm_id = vms["cli-1"]["id"]
    code, out, _ = await cli(server, "vm", "stop", vm_id)
    assert code == 0 and out == "cli-1 is stopped\n"  # in the user's words, by name
    code, out, _ = await cli(server, "vm", "get", vm_id, "--json")
    assert json.loads(out)["status"] == "stopped"
    code, out, _ = await cli(server, "vm", "start", vm_id, "--no-wait")
    assert code == 0 and out.strip().startswith("job-")
    code, out, _ = await cli(server, "job", "wait", out.strip(), "--json")
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    code, out, _ = await cli(server, "job", "list")
    assert "vm-start" in out and "vm-create" in out
    code, _, err = await cli(server, "vm", "delete", vm_id, vms["cli-2"]["id"])
    assert code == 1 and "cli-1 and cli-2 are running" in err and "--force" in err  # not a TTY: refused, not asked
    code, out, _ = await cli(server, "vm", "list", "--json")
    assert len(json.loads(out)) == 2  # nothing deleted
    code, out, _ = await cli(server, "vm", "delete", vm_id, vms["cli-2"]["id"], "--force")
    assert code == 0 and out == "cli-1 and cli-2 deleted\n"
    code, out, _ = await cli(server, "vm", "list", "--json")
    assert json.loads(out) == []


async def test_cli_errors_are_messages_and_exit_codes(server: Server) -> None:
    code, _, err = await cli(server, "vm", "create", "bad_name")
    assert code == 1 and "not valid" in err and "Traceback" not in err
    code, _, err = await cli(server, "vm", "get", "vm-nothere00000")
    assert code == 1 and "does not exist" in err
    code, _, err = await cli(server, "vm", "create", "huge", "--cpu", "500")
    assert code == 1 and "500 vCPUs is more than any node can hold" in err and "VMPLANE_CPU_OVERCOMMIT=4.0" in err


async def test_node_list(server: Server) -> None:
    code, out, _ = await cli(server, "node", "list", "--json")
    nodes: list[dict[str, Any]] = json.loads(out)
    assert code == 0 and [n["id"] for n in nodes] == ["node-1", "node-2", "node-3"]
    code, out, _ = await cli(server, "node", "list")
    assert "simulated" in out
