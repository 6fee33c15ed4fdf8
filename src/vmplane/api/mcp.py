"""A Model Context Protocol server (the official `mcp` SDK) exposing api/mcp_commands.py's
operations as tools with JSON schemas, two ways:

- streamable HTTP at `/mcp` of the main application (stateless, JSON answers), for the
  caller the request's vmplane credentials name (X-API-Key or Authorization: Bearer);
- `vmplane mcp` (cli) over stdio, which sends each tool call to a vmplane server's
  `POST /api/v1/mcp` with an API key (`http_caller`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..errors import Unauthorized, VmplaneError
from ..http_clients import async_api_client
from .mcp_commands import BY_TOOL, OPERATIONS, Operation, run

if TYPE_CHECKING:
    from ..runtime import Runtime

Caller = Callable[[Server, Operation, dict[str, Any]], Awaitable[Any]]


class ToolError(Exception):
    """A tool call that failed: its message is what the agent reads."""


def build_server(call: Caller) -> Server:
    server: Server = Server("vmplane", version=__version__, instructions="Manage vmplane VMs, plugins and deployments.")

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [
            types.Tool(
                name=op.tool, title=op.command, description=op.description, inputSchema=op.params,
                annotations=types.ToolAnnotations(readOnlyHint=not op.writes, destructiveHint=op.command.endswith(".delete")),
            )
            for op in OPERATIONS
        ]  # fmt: skip

    @server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        op = BY_TOOL.get(name)
        if op is None:
            raise ToolError(f"unknown tool: {name}")
        try:
            return {"result": await call(server, op, arguments or {})}
        except VmplaneError as exc:
            raise ToolError(exc.message) from None

    return server


class McpHttp:
    """The ASGI endpoint `/mcp`: refuses requests without valid credentials (401), runs each
    tool call as the request's principal."""

    def __init__(self, rt: Runtime) -> None:
        async def call(server: Server, op: Operation, args: dict[str, Any]) -> Any:
            request = server.request_context.request
            who = getattr(request.state, "principal", None) if request is not None else None
            if who is None:
                raise Unauthorized("credentials required")
            return await run(rt, op, args, who)

        self.server = build_server(call)
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=True)

    def run(self) -> Any:
        """Context manager for the application's lifespan (the SDK's task group)."""
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state") or {}
        if state.get("principal") is None:
            message = state.get("auth_error") or "credentials required: send X-API-Key or Authorization: Bearer"
            body = json.dumps({"error": message, "code": "unauthorized", "details": {}}).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.manager.handle_request(scope, receive, send)


def http_caller(url: str, key: str, timeout: float = 120) -> Caller:
    """Tool calls sent to a vmplane server's `POST /api/v1/mcp` (for `vmplane mcp`)."""
    client = async_api_client(url, key, timeout=timeout)

    async def call(_server: Server, op: Operation, args: dict[str, Any]) -> Any:
        try:
            resp = await client.post("/api/v1/mcp", json={"command": op.command, "params": args})
        except httpx.HTTPError as exc:
            raise ToolError(f"vmplane at {url} cannot be reached: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200:
            raise ToolError(f"vmplane answered HTTP {resp.status_code}: {body.get('error') or resp.text[:200]}")
        if body.get("error"):
            raise ToolError(body["error"])
        return body.get("result")

    return call


async def serve_stdio(url: str, key: str) -> None:
    """Serve the tools over stdin/stdout, each call forwarded to vmplane at `url`."""
    from mcp.server.stdio import stdio_server

    server = build_server(http_caller(url, key))
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
