"""MCP on the sim driver: Volant's command endpoint (POST /api/v1/mcp, native and on the
Volant face), and the Model Context Protocol server: the `mcp` SDK's client lists the tools
and creates a VM over streamable HTTP at /mcp; credentials are required."""

import json
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ..support import Server


async def command(server: Server, path: str, command: Any, params: Any = None) -> dict[str, Any]:
    r = await server.client.post(path, json={"command": command, "params": params or {}})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("path", ["/api/v1/mcp", "/compat/volant/api/v1/mcp"])
async def test_volant_commands(server: Server, path: str) -> None:
    caps = (await command(server, path, "volant.system.get_capabilities"))["result"]["capabilities"]
    names = {c["name"] for c in caps}
    assert {"volant.vms.list", "volant.vms.create", "volant.system.get_capabilities", "volant.vms.start",
            "volant.vms.stop", "volant.vms.delete", "volant.vms.get", "volant.deployments.list"} <= names  # fmt: skip
    assert all(c["params"]["type"] == "object" for c in caps)

    out = await command(server, path, "volant.vms.create", {"name": "agent-1", "cpu_cores": 2, "memory_mb": 256})
    assert "error" not in out, out
    vm = out["result"]
    assert vm["name"] == "agent-1" and vm["status"] == "running" and vm["cpu_cores"] == 2 and vm["memory_mb"] == 256
    assert isinstance(vm["id"], int) and set(vm) >= {"id", "name", "status", "ip_address", "cpu_cores", "memory_mb"}
    listed = (await command(server, path, "volant.vms.list"))["result"]
    assert [v["name"] for v in listed] == ["agent-1"]
    assert (await command(server, path, "volant.vms.stop", {"name": "agent-1"}))["result"]["status"] == "stopped"
    assert (await command(server, path, "volant.vms.start", {"name": "agent-1"}))["result"]["status"] == "running"
    assert (await command(server, path, "volant.vms.get", {"name": "agent-1"}))["result"]["name"] == "agent-1"
    assert (await command(server, path, "volant.vms.delete", {"name": "agent-1"}))["result"]["deleted"] is True
    assert (await command(server, path, "volant.vms.list"))["result"] == []

    # failures are 200 with error
    assert (await command(server, path, "volant.nope"))["error"] == "unknown command: volant.nope"
    assert (await command(server, path, "volant.vms.create", {}))["error"] == "params.name is required"
    out = await command(server, path, "volant.vms.create", {"name": "x", "config": {"resources": {"cpu_cores": "two"}}})
    assert out["result"] is None and out["error"].startswith("params.config.resources.cpu_cores"), out  # the config is named as a param
    out = await command(server, path, "volant.vms.create", {"name": "x", "runtime": "missing"})
    assert out["result"] is None and "missing" in out["error"]
    assert "not found" in (await command(server, path, "volant.vms.get", {"name": "ghost"}))["error"]
    # bad JSON is the only 400
    r = await server.client.post(path, content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


async def test_mcp_sdk_client_over_streamable_http(server: Server) -> None:
    async with httpx.AsyncClient(headers={"X-API-Key": server.admin_key}, timeout=60) as http:
        async with streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                assert info.serverInfo.name == "vmplane"
                tools = {t.name: t for t in (await session.list_tools()).tools}
                assert {"vms_list", "vms_create", "vms_get", "vms_start", "vms_stop", "vms_delete", "system_get_capabilities", "deployments_list"} <= set(tools)
                assert tools["vms_create"].inputSchema["required"] == ["name"]
                assert tools["vms_list"].annotations.readOnlyHint and not tools["vms_create"].annotations.readOnlyHint
                assert tools["vms_delete"].annotations.destructiveHint
                created = await session.call_tool("vms_create", {"name": "from-mcp", "memory_mb": 256})
                assert not created.isError, created
                assert created.structuredContent["result"]["name"] == "from-mcp"
                listed = await session.call_tool("vms_list", {})
                assert [v["name"] for v in json.loads(listed.content[0].text)["result"]] == ["from-mcp"]
                bad = await session.call_tool("vms_get", {"name": "ghost"})
                assert bad.isError and "not found" in bad.content[0].text
    vms = (await server.client.get("/api/v1/vms")).json()["items"]
    assert [v["name"] for v in vms] == ["from-mcp"] and vms[0]["resources"]["ramMb"] == 256


async def test_mcp_http_needs_credentials(server: Server) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Accept": "application/json, text/event-stream"})  # fmt: skip
        assert r.status_code == 401
        r = await http.post(f"{server.url}/mcp", json={}, headers={"X-API-Key": "vmp_wrong"})
        assert r.status_code == 401
