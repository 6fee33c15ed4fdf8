"""`vmplane vm import`: an OVA on the server's host becomes a VM; a bad mapping is refused."""

import subprocess
from pathlib import Path

import pytest

from ..imports_support import make_ova
from ..support import Server
from .test_cli import cli


async def test_vm_import_of_an_ova(server: Server, tmp_path: Path) -> None:
    import shutil

    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    raw = tmp_path / "d.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(raw), "16M"], check=True, capture_output=True)
    drop = server.rt.data_dir / "imports"
    drop.mkdir(parents=True, exist_ok=True)
    ova = make_ova(drop / "cli.ova", raw, name="cli-appliance", cpu=2, memory_mb=256)
    code, out, err = await cli(server, "vm", "import", str(ova), "--map", "VM Network=user", "--no-start")
    assert code == 0, err
    assert "succeeded" in out and "(cli-appliance)" in out, out
    code, out, _ = await cli(server, "vm", "get", "cli-appliance", "--json")
    assert code == 0 and '"status": "stopped"' in out
    code, _out, err = await cli(server, "vm", "import", str(ova), "--map", "nonsense")
    assert code != 0 and "SOURCE_NETWORK=VMPLANE_NETWORK" in err
