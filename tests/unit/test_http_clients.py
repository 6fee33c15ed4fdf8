"""Each kind of HTTP client has one builder (http_clients.py, outbound.py): what each builder
gives, and that no other module builds a client by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import vmplane
from vmplane.http_clients import api_client, async_api_client, link_client

SRC = Path(vmplane.__file__).parent
BUILDERS = {"outbound.py", "http_clients.py"}


async def test_a_link_takes_nothing_from_the_environment_and_follows_no_redirect() -> None:
    async with link_client(base_url="http://agent.example:9000/agent/", headers={"Authorization": "Bearer k"}, timeout=5) as c:
        assert c.trust_env is False and c.follow_redirects is False
        assert c.headers["Authorization"] == "Bearer k" and str(c.base_url) == "http://agent.example:9000/agent/"


async def test_a_users_tool_sends_its_key_and_keeps_the_environment() -> None:
    with api_client("http://127.0.0.1:8080/", "k1", timeout=30) as c:
        assert c.headers["X-API-Key"] == "k1" and c.trust_env is True and str(c.base_url) == "http://127.0.0.1:8080"
    with api_client("http://127.0.0.1:8080", None, timeout=30) as c:
        assert "X-API-Key" not in c.headers
    async with async_api_client("http://127.0.0.1:8080/", "k2", timeout=120) as ac:
        assert ac.headers["X-API-Key"] == "k2" and ac.trust_env is True


def _hand_built(tree: ast.AST) -> list[int]:
    """Lines that call httpx.Client(...) or httpx.AsyncClient(...), except an in-process
    client of an ASGI app (it makes no connection)."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("Client", "AsyncClient")):
            continue
        if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "httpx"):
            continue
        transport = next((k.value for k in node.keywords if k.arg == "transport"), None)
        if isinstance(transport, ast.Call) and isinstance(transport.func, ast.Attribute) and transport.func.attr == "ASGITransport":
            continue
        out.append(node.lineno)
    return out


def test_no_module_builds_an_http_client_by_hand() -> None:
    found = {
        f"{path.relative_to(SRC)}:{line}"
        for path in SRC.rglob("*.py")
        if path.name not in BUILDERS or path.parent != SRC
        for line in _hand_built(ast.parse(path.read_text()))
    }
    assert not found, f"build clients with http_clients.py or outbound.py, not by hand: {sorted(found)}"
