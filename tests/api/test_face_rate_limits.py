"""429 on every face: no contract has it, vmplane keeps it (it protects the installation), and
every one says when to come back (`Retry-After`, whole seconds rounded up) in the face's own
error shape, on the face's paths and on a listener of its own: the identity middleware's
request buckets, and the core's limits on things open at once (event streams, consoles)."""

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from ..support_fastvm import GuestSimDriver
from .test_faces import serve_face


def _native(body: dict[str, Any]) -> bool:
    return set(body) == {"error", "code", "details"} and body["code"] == "rate_limited"


def _fastvm(body: dict[str, Any]) -> bool:
    return set(body) == {"error"}


def _bluelobster(body: dict[str, Any]) -> bool:
    return set(body) == {"error", "message"} and body["error"] == "rate_limited"


def _volant(body: dict[str, Any]) -> bool:
    return set(body) == {"error", "details"} and isinstance(body["details"], dict)


def _hypersdk(body: dict[str, Any]) -> bool:
    return set(body) == {"error", "timestamp"} and body["timestamp"].endswith("Z")


FACES: dict[str, tuple[str, str, Callable[[dict[str, Any]], bool]]] = {
    "native": ("/api/v1", "/vms", _native),
    "fastvm": ("/compat/fastvm", "/v1/vms", _fastvm),
    "bluelobster": ("/compat/bluelobster", "/api/v1/instances", _bluelobster),
    "volant": ("/compat/volant", "/api/v1/vms", _volant),
    "hypersdk": ("/compat/hypersdk", "/schedules", _hypersdk),
}
"""face -> (its prefix on the main listener, a path it serves, its error shape)"""


@pytest.mark.parametrize("name", list(FACES))
async def test_request_limit_answers_429_with_retry_after_in_the_faces_shape(server_factory: Any, name: str) -> None:
    prefix, path, shape = FACES[name]
    server = await server_factory(rate_limit_per_second=0.01, rate_limit_burst=2)  # a token per 100 s
    listener, task, url = await serve_face(server, name)
    try:
        c = server.client
        assert [(await c.get(prefix + path)).status_code for _ in range(2)] == [200, 200]
        r = await c.get(prefix + path)
        assert r.status_code == 429, r.text
        # (1 - what refilled since the second request) / 0.01 per s, rounded up: 100, or 99 when
        # a loaded machine took over a second between the two
        assert r.headers["retry-after"] in ("99", "100"), r.headers
        assert shape(r.json()), r.json()
        assert "rate limit exceeded" in r.text
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": server.admin_key}) as own:
            r = await own.get(path)  # the face at the root of its own listener: the same bucket, the same answer
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"].isdigit() and 98 <= int(r.headers["retry-after"]) <= 100
        assert shape(r.json()), r.json()
    finally:
        listener.should_exit = True
        await task


async def _refused_ws(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    with pytest.raises(websockets.exceptions.InvalidStatus) as denied:
        async with websockets.connect(url, additional_headers=headers or {}):
            pass
    response = denied.value.response
    return response.status_code, json.loads(response.body), response.headers.get("retry-after", "")


async def test_open_stream_limits_answer_429_with_retry_after_on_every_face(server_factory: Any) -> None:
    """One open stream per credential: with the native event stream held, each face's own
    stream (SSE, WebSocket, console) is refused 429 in its shape, with `Retry-After: 5`
    (a slot frees when a stream ends, which nobody can foresee)."""
    server = await server_factory(max_streams_per_credential=1, nodes=[("node-1", GuestSimDriver(hostname="node-1", latency=0.005))])
    c = server.client
    r = await c.post("/api/v1/vms", json={"name": "talker"})
    await server.wait_job(r.json()["jobId"])
    vm = (await c.get(f"/api/v1/vms/{r.json()['vmIds'][0]}")).json()
    listener, task, volant_url = await serve_face(server, "volant")
    ws_base = f"ws://127.0.0.1:{server.port}"
    key = {"X-API-Key": server.admin_key}
    try:
        async with c.stream("GET", "/api/v1/events") as held:
            assert held.status_code == 200

            r = await c.get("/api/v1/events")
            assert r.status_code == 429 and r.headers["retry-after"] == "5" and _native(r.json()), (r.headers, r.text)

            r = await c.get("/compat/volant/api/v1/events/vms")
            assert r.status_code == 429 and r.headers["retry-after"] == "5" and _volant(r.json()), (r.headers, r.text)
            async with httpx.AsyncClient(base_url=volant_url, headers=key) as own:
                r = await own.get("/api/v1/events/vms")
            assert r.status_code == 429 and r.headers["retry-after"] == "5" and _volant(r.json()), (r.headers, r.text)

            status, body, retry = await _refused_ws(f"{ws_base}/compat/hypersdk/ws", key)
            assert (status, retry) == (429, "5") and _hypersdk(body), body

            tok = (await c.post(f"/compat/fastvm/v1/vms/{vm['uuid']}/console-token")).json()
            status, body, retry = await _refused_ws(f"{ws_base}{tok['websocketPath']}?session={tok['token']}")
            assert (status, retry) == (429, "5") and _fastvm(body), body

            ticket = (await c.post(f"/compat/bluelobster/api/v1/instances/{vm['uuid']}/console")).json()
            status, body, retry = await _refused_ws(f"{ws_base}{ticket['websocket_path']}?ticket={ticket['ticket']}")
            assert (status, retry) == (429, "5") and _bluelobster(body), body

            tok = (await c.post(f"/api/v1/vms/{vm['id']}/console")).json()
            status, body, retry = await _refused_ws(f"{ws_base}{tok['websocketPath']}")
            assert (status, retry) == (429, "5") and _native(body), body
        # the slot is free again once the server sees the held stream end
        async def streams_again() -> bool:
            async with c.stream("GET", "/compat/volant/api/v1/events/vms") as again:
                return again.status_code == 200

        for _ in range(100):
            if await streams_again():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the stream slot was never released")
    finally:
        listener.should_exit = True
        await task
