"""`vmplane mcp`: the MCP server over stdio (a real subprocess driven by the `mcp` SDK's
client), its tool calls sent to a running vmplane with an API key."""

import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from ..support import Server


async def test_vmplane_mcp_over_stdio(server: Server) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "vmplane.cli.main", "mcp", "--url", server.url],
        env={**os.environ, "VMPLANE_API_KEY": server.admin_key},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            assert {"vms_list", "vms_create", "vms_delete", "system_get_capabilities"} <= tools
            caps = await session.call_tool("system_get_capabilities", {})
            assert not caps.isError and any(c["name"] == "volant.vms.create" for c in caps.structuredContent["result"]["capabilities"])
            made = await session.call_tool("vms_create", {"name": "stdio-vm"})
            assert not made.isError, made
            assert made.structuredContent["result"]["status"] == "running"
            bad = await session.call_tool("vms_create", {"name": "stdio-vm"})
            assert bad.isError and "already exists" in bad.content[0].text
    assert [v["name"] for v in (await server.client.get("/api/v1/vms")).json()["items"]] == ["stdio-vm"]
