"""`vmplane template import NAME --file PATH | --source-url URL` against a sim server: the file
is streamed to POST /api/v1/templates/upload and the import job followed; a URL goes to
POST /api/v1/templates; the server's refusal (a taken name) and a missing file are said in the
CLI's words. On SQLite and PostgreSQL. (The upload's attacks: tests/security/test_template_upload.py.)"""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ..support import Server


async def vmplane(server: Server, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "VMPLANE_API_KEY": server.admin_key, "VMPLANE_URL": server.url},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_template_import_from_a_file_and_a_url(server_factory: Any, database_url: str, tmp_path: Path) -> None:
    server = await server_factory(database_url=database_url)  # SQLite, and PostgreSQL when there is one
    img = tmp_path / "cli.raw"
    img.write_bytes(os.urandom(3 << 20))  # 3 MiB: more than one chunk
    code, out, err = await vmplane(server, "template", "import", "cli-up", "--file", str(img), "--os", "debian")
    assert code == 0, err
    assert out.startswith("template cli-up tpl-") and out.rstrip().endswith("ready"), out
    tpl = (await server.client.get("/api/v1/templates/cli-up")).json()
    assert tpl["status"] == "ready" and tpl["os"] == "debian" and tpl["loginUser"] == "debian" and tpl["sourceUrl"] is None, tpl

    code, out, err = await vmplane(server, "template", "import", "cli-url", "--source-url", f"file://{img}")
    assert code == 0, err
    assert (await server.client.get("/api/v1/templates/cli-url")).json()["status"] == "ready"

    code, _, err = await vmplane(server, "template", "import", "cli-up", "--file", str(img))
    assert code == 1 and "already exists" in err, err
    code, _, err = await vmplane(server, "template", "import", "cli-none", "--file", str(tmp_path / "absent.qcow2"))
    assert code == 2 and "--file" in err, err
    code, _, err = await vmplane(server, "template", "import", "cli-none")
    assert code == 2 and "--file or --source-url" in err, err
    names = {t["name"] for t in (await server.client.get("/api/v1/templates")).json()["items"]}
    assert "cli-none" not in names
    assert not list(server.rt.images_dir.glob("*.upload"))
