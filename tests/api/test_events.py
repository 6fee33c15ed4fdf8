"""The event log and its streams: SSE with resume, WebSocket, filters, slow consumers."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from ..support import Server


async def sse_events(client: httpx.AsyncClient, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE stream into dicts with id, event and data (comments are skipped)."""
    async with client.stream("GET", "/api/v1/events", params=params, headers=headers, timeout=30) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield {**fields, "data": json.loads(fields["data"])}
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


async def collect(gen: AsyncIterator[dict[str, Any]], n: int, timeout: float = 20) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for e in gen:
            out.append(e)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def test_events_are_persisted_with_the_change(server: Server) -> None:
    job = await server.create({"name": "ev-1"})
    vm_id = job["tasks"][0]["resourceId"]
    got = await collect(sse_events(server.client, {"since": "0", "resource": vm_id}), 4)
    types = [e["event"] for e in got]
    assert types[:2] == ["vm.created", "task.started"] and "vm.running" in types
    first = got[0]["data"]
    assert first["type"] == "vm.created" and first["resource"] == vm_id and first["data"]["name"] == "ev-1"
    assert first["time"].endswith("Z") and int(got[0]["id"]) == first["id"]
    job_events = await collect(sse_events(server.client, {"since": "0", "resource": job["id"]}), 3)
    assert [e["event"] for e in job_events] == ["job.submitted", "job.started", "job.completed"]
    assert job_events[-1]["data"]["data"]["state"] == "succeeded"


async def test_sse_resume_sees_every_event_exactly_once(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=4, sim_latency_ms=20)
    c = server.client
    seen: list[int] = []
    first = sse_events(c, {"types": "vm.*"})
    # start creating while subscribed; disconnect after some events; resume from the last id
    base = server.rt.events.subscriber_count
    collecting = asyncio.create_task(collect(first, 15))
    for _ in range(200):  # a stream without Last-Event-ID sees what is delivered after it subscribed
        if server.rt.events.subscriber_count > base:
            break
        await asyncio.sleep(0.01)
    creating = asyncio.create_task(server.create([{"name": f"rs-{i}"} for i in range(30)]))
    part = await collecting
    await first.aclose()
    seen += [int(e["id"]) for e in part]
    await asyncio.sleep(0.3)  # events keep coming while nobody listens
    await creating
    rest = sse_events(c, {"types": "vm.*"}, {"Last-Event-ID": str(seen[-1])})
    # 30 VMs × (created, starting, running) = 90 vm events in all
    more = await collect(rest, 90 - len(seen))
    await rest.aclose()
    seen += [int(e["id"]) for e in more]
    assert len(seen) == len(set(seen)) == 90
    assert seen == sorted(seen)
    assert all(e["event"].startswith("vm.") for e in part + more)


async def test_filters_and_bad_filters(server: Server) -> None:
    await server.create([{"name": "f-1"}, {"name": "f-2"}])
    got = await collect(sse_events(server.client, {"since": "0", "types": "job.completed,vm.running"}), 3)
    assert sorted(e["event"] for e in got) == ["job.completed", "vm.running", "vm.running"]
    r = await server.client.get("/api/v1/events", params={"types": "nonsense"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "types"
    r = await server.client.get("/api/v1/events", headers={"Last-Event-ID": "abc"})
    assert r.status_code == 400


async def test_websocket_stream_with_status_messages(server_factory: Any) -> None:
    server = await server_factory(event_heartbeat_seconds=0.3)
    url = server.url.replace("http", "ws") + "/api/v1/events/ws?types=job.*"
    with pytest.raises(websockets.exceptions.InvalidStatus):  # credentials are required
        async with websockets.connect(url):
            pass
    async with websockets.connect(url, additional_headers={"X-API-Key": server.admin_key}) as ws:
        hello = json.loads(await ws.recv())
        assert hello["kind"] == "status" and "lastEventId" in hello
        await server.client.post("/api/v1/vms", json={"name": "ws-1"})
        kinds: list[str] = []
        types: list[str] = []
        while "job.completed" not in types:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            kinds.append(msg["kind"])
            if msg["kind"] == "event":
                types.append(msg["type"])
        assert types[0] == "job.submitted" and "job.started" in types
        # idle: status messages keep coming
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["kind"] == "status"


async def test_a_slow_consumer_is_dropped_and_told_why(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=4, event_subscriber_queue=10, sim_latency_ms=1)
    c = server.client
    async with c.stream("GET", "/api/v1/events", timeout=30) as r:
        lines = r.aiter_lines()
        assert (await lines.__anext__()).startswith("retry")
        # do not read while 100 VMs produce hundreds of events
        job = await server.create([{"name": f"slow-{i}"} for i in range(100)])
        assert job["state"] == "succeeded"  # the service was not slowed down
        body = ""
        async for line in lines:
            body += line + "\n"
            if "slow consumer" in body:
                break
        assert "event: error" in body and "slow consumer" in body
    # another subscriber is unaffected
    got = await collect(sse_events(c, {"since": "0", "types": "job.completed"}), 1)
    assert got[0]["event"] == "job.completed"
