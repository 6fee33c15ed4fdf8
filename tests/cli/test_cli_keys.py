"""Where the CLI finds its key, and what it says when the server refuses it (a 401 names the
key it sent or the file it looked for, and how to point it at one); `vm create` without
--template makes tiny-linux guests when the server has that template, else an empty disk."""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..support import Server, make_template


async def cli(server: Server, cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("VMPLANE_API_KEY", "VMPLANE_DATA_DIR", "VMPLANE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, "--url", server.url, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**base, "COLUMNS": "300", **env},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), " ".join(err.decode().split())  # rich wraps: one line to search


async def test_a_401_says_where_the_cli_looked_for_the_key(server: Server, tmp_path: Path) -> None:
    data_dir = server.rt.data_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # nothing found: the default ./.vmplane of the current directory, named in full
    code, _, err = await cli(server, elsewhere, {}, "vm", "list")
    assert code == 1 and "error (401)" in err, err
    assert f"VMPLANE_API_KEY is not set and {elsewhere}/.vmplane/admin-api-key does not exist" in err, err
    assert "VMPLANE_DATA_DIR=<the --data-dir of `vmplane serve`" in err and "VMPLANE_API_KEY=<a key>" in err
    # VMPLANE_DATA_DIR names another directory: that one is named
    code, _, err = await cli(server, elsewhere, {"VMPLANE_DATA_DIR": str(tmp_path / "nope")}, "vm", "list")
    assert code == 1 and f"{tmp_path}/nope/admin-api-key does not exist" in err, err
    # a key file that cannot be read says why, and is no traceback
    (elsewhere / ".vmplane" / "admin-api-key").mkdir(parents=True)
    code, _, err = await cli(server, elsewhere, {}, "vm", "list")
    assert code == 1 and f"{elsewhere}/.vmplane/admin-api-key cannot be read (Is a directory)" in err and "Traceback" not in err, err
    # a key that was sent and refused: which one
    code, _, err = await cli(server, elsewhere, {"VMPLANE_API_KEY": "vmp_not-a-key"}, "vm", "list")
    assert code == 1 and "the key sent was VMPLANE_API_KEY's, and the server does not take it" in err, err
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "admin-api-key").write_text("vmp_not-a-key\n")
    code, _, err = await cli(server, elsewhere, {"VMPLANE_DATA_DIR": str(tmp_path / "wrong")}, "vm", "list")
    assert code == 1 and f"the key sent was the one in {tmp_path}/wrong/admin-api-key, and the server does not take it" in err, err
    # pointed at the server's data dir, as the server's start-up log says to
    code, out, err = await cli(server, elsewhere, {"VMPLANE_DATA_DIR": str(data_dir)}, "vm", "list", "--json")
    assert code == 0 and json.loads(out) == [], err


async def test_vm_create_defaults_to_tiny_linux_when_the_server_has_it(server: Server, tmp_path: Path) -> None:
    env = {"VMPLANE_API_KEY": server.admin_key}

    async def made(name: str) -> dict[str, Any]:
        code, _, err = await cli(server, tmp_path, env, "vm", "create", name, "--no-start", "--json")
        assert code == 0, err
        vm: dict[str, Any] = (await server.client.get("/api/v1/vms", params={"name": name})).json()["items"][0]
        return vm

    # the sim driver registers no tiny-linux: no --template is an empty disk, as --help says
    assert (await server.client.get("/api/v1/templates/tiny-linux")).status_code == 404
    blank = await made("no-tiny")
    assert blank["templateId"] is None and blank["blank"] is True
    tiny = await make_template(server, tmp_path, "tiny-linux")
    vm = await made("with-tiny")
    assert vm["templateId"] == tiny["id"] and not vm["blank"]
    code, out, _ = await cli(server, tmp_path, env, "vm", "create", "--help")
    assert "default tiny-linux when the server has it" in " ".join(out.split())
