"""`vmplane iso list|import|delete` and the boot options of `vm create` / `vm edit` against a
sim server: a file is streamed to POST /api/v1/isos/upload, a URL goes to POST /api/v1/isos and
its job is followed; a VM gets the ISO, a boot order and a firmware, then the ISO is ejected;
the server's refusals are said with the CLI's flags."""

import functools
import hashlib
import http.server
import threading
from pathlib import Path
from typing import Any

from ..iso_support import small_iso
from ..support import Server
from .test_cli_template_import import vmplane


async def test_iso_import_list_boot_options_and_delete(server: Server, tmp_path: Path) -> None:
    iso = small_iso(tmp_path / "installer.iso")
    code, out, err = await vmplane(
        server, "iso", "import", "installer", "--file", str(iso), "--sha256", hashlib.sha256(iso.read_bytes()).hexdigest()
    )
    assert code == 0, err
    assert out.startswith("iso installer iso-") and "ready" in out, out
    code, _, err = await vmplane(server, "iso", "import", "wrong", "--file", str(iso), "--sha256", "0" * 64)
    assert code == 2 and "--sha256" in err, err

    root = tmp_path / "www"
    root.mkdir()
    (root / "net.iso").write_bytes(iso.read_bytes())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code, out, err = await vmplane(
            server, "iso", "import", "net", "--source-url", f"http://127.0.0.1:{httpd.server_address[1]}/net.iso"
        )
    finally:
        httpd.shutdown()
    assert code == 0 and "ready" in out, err
    code, _, err = await vmplane(server, "iso", "import", "meta", "--source-url", "http://169.254.169.254/x.iso")
    assert code == 1 and "--source-url" in err, err
    code, out, _ = await vmplane(server, "iso", "list")
    assert "installer" in out and "net" in out and "meta" not in out, out

    code, out, err = await vmplane(
        server, "vm", "create", "setup", "--iso", "installer", "--boot-order", "cdrom,disk", "--firmware", "uefi", "--no-wait"
    )
    assert code == 0, err
    vms = (await server.client.get("/api/v1/vms")).json()["items"]
    vm: dict[str, Any] = vms[0]
    await server.wait_job((await server.client.get("/api/v1/jobs")).json()["items"][0]["id"])
    vm = (await server.client.get(f"/api/v1/vms/{vm['id']}")).json()
    assert vm["templateId"] is None and vm["blank"] and vm["bootOrder"] == ["cdrom", "disk"] and vm["firmware"] == "uefi"
    assert vm["cdrom"] is not None
    code, _, err = await vmplane(server, "vm", "create", "bad", "--boot-order", "cdrom,floppy")
    assert code == 1 and "--boot-order" in err, err
    code, _, err = await vmplane(server, "vm", "create", "bad", "--iso", "no-such")
    assert code == 1 and "--iso" in err, err

    code, _, err = await vmplane(server, "iso", "delete", "installer")
    assert code == 1 and "setup" in err and "eject" in err, err
    code, out, err = await vmplane(server, "vm", "edit", "setup", "--eject", "--boot-order", "disk")
    assert code == 0, err
    assert out.strip() == "setup: CD-ROM ejected; boots disk from its next start", out
    vm = (await server.client.get(f"/api/v1/vms/{vm['id']}")).json()
    assert vm["cdrom"] is None and vm["bootOrder"] == ["disk"]
    code, _, err = await vmplane(server, "vm", "edit", "setup", "--iso", "installer", "--eject")
    assert code == 2 and "--eject" in err, err
    code, out, err = await vmplane(server, "iso", "delete", "installer")
    assert code == 0 and "deleted" in out, err
