"""The Volant face's plugin, per-VM OpenAPI and MCP routes (api/compat/volant/plugins.py)
on the sim driver, in Volant's shapes."""

import hashlib
from pathlib import Path
from typing import Any

from ..support import Server, free_port

B = "/compat/volant/api/v1"


def manifest(tmp_path: Path, **over: Any) -> dict[str, Any]:
    image = tmp_path / "rootfs.raw"
    image.write_bytes(b"\x42" * 4096)
    return {
        "schema_version": "1.0", "name": "web", "version": "1.0",
        "resources": {"cpu_cores": 1, "memory_mb": 128},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd"]},
        "rootfs": {"url": f"file://{image}", "checksum": hashlib.sha256(image.read_bytes()).hexdigest()},
        **over,
    }  # fmt: skip


async def test_plugins_in_volant_shapes(server: Server, tmp_path: Path) -> None:
    c = server.client
    assert (await c.get(f"{B}/plugins")).json() == {"plugins": []}
    r = await c.post(f"{B}/plugins", json=manifest(tmp_path, openapi=f"http://127.0.0.1:{free_port()}/spec.json"))
    assert r.status_code == 201, r.text
    assert r.json()["runtime"] == "web" and r.json()["enabled"] is True
    r = await c.post(f"{B}/plugins", json={**manifest(tmp_path), "name": "x", "resources": {"cpu_cores": 0, "memory_mb": 1}})
    assert r.status_code == 400 and r.json()["details"] == {"field": "resources.cpu_cores"}, r.text
    assert (await c.get(f"{B}/plugins")).json() == {"plugins": ["web"]}
    assert (await c.get(f"{B}/plugins/web")).json()["workload"]["base_url"] == "http://127.0.0.1:8080"
    assert (await c.get(f"{B}/plugins/nope")).status_code == 404
    r = await c.post(f"{B}/plugins/web/enabled", json={"enabled": False})
    assert r.status_code == 200 and r.json() == {"name": "web", "enabled": False}
    out = (await c.post(f"{B}/mcp", json={"command": "volant.vms.create", "params": {"name": "w1", "runtime": "web"}})).json()
    assert out["result"] is None and "disabled" in out["error"]
    assert (await c.post(f"{B}/plugins/web/enabled", json={"enabled": True})).status_code == 200

    for _ in range(200):  # the image is fetched by a job
        out = (await c.post(f"{B}/mcp", json={"command": "volant.vms.create", "params": {"name": "w1", "runtime": "web"}})).json()
        if "importing" not in (out.get("error") or ""):
            break
    assert out.get("error") is None and out["result"]["name"] == "w1", out
    assert (out["result"]["cpu_cores"], out["result"]["memory_mb"], out["result"]["runtime"]) == (1, 128, "web")  # the manifest's
    # the manifest's openapi URL does not answer: 502; a VM of no plugin: 404 as the daemon's
    r = await c.get(f"{B}/vms/w1/openapi")
    assert r.status_code == 502 and set(r.json()) == {"error", "details"}, r.text
    assert (await c.post(f"{B}/mcp", json={"command": "volant.vms.create", "params": {"name": "plain"}})).json().get("error") is None
    r = await c.get(f"{B}/vms/plain/openapi")
    assert r.status_code == 404 and r.json()["error"] == "openapi spec unavailable"
    assert (await c.get(f"{B}/vms/ghost/openapi")).status_code == 404

    assert (await c.delete(f"{B}/plugins/web")).status_code == 409
    assert (await c.post(f"{B}/mcp", json={"command": "volant.vms.delete", "params": {"name": "w1"}})).json()["result"]["deleted"]
    assert (await c.delete(f"{B}/plugins/web")).status_code == 204
    assert (await c.get(f"{B}/plugins")).json() == {"plugins": []}
