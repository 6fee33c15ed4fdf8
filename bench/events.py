"""Event fan-out: 1,000 VM events to 100 SSE subscribers; time until the last subscriber
has them all (target < 2 s).

    .venv/bin/python bench/events.py [--subscribers 100] [--events 1000]

Starts its own `vmplane serve` (sim driver). The burst is one bulk create of N VMs, whose
N `vm.created` events commit in one transaction; the clock starts when the POST is sent.
Subscribers are raw sockets speaking HTTP/1.0 (no chunked framing to parse), so the client
costs little next to the server.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import server  # noqa: E402

MARKER = b"event: vm.created\n"


async def subscriber(port: int, key: str, want: int, ready: asyncio.Event, ready_count: list[int], total: int, done_at: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/events?types=vm.created HTTP/1.0\r\nHost: bench\r\nX-API-Key: %s\r\n\r\n" % key.encode())
    await writer.drain()
    buf = b""
    while b"retry:" not in buf:  # subscribed once the stream's first bytes arrive
        buf += await reader.read(65536)
    ready_count[0] += 1
    if ready_count[0] == total:
        ready.set()
    seen = buf.count(MARKER)
    tail = b""
    while seen < want:
        chunk = await reader.read(262144)
        if not chunk:
            raise RuntimeError("stream ended early")
        data = tail + chunk
        seen += data.count(MARKER)
        tail = data[-(len(MARKER) - 1):]
    done_at.append(time.perf_counter())
    writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--events", type=int, default=1000)
    args = ap.parse_args()
    async with server(["--driver", "sim", "--sim-nodes", "100"], {"VMPLANE_SIM_LATENCY_MS": "0"}, "vmplane-bench-events-") as srv:
        client, port, key = srv.client, srv.port, srv.key
        ready = asyncio.Event()
        count = [0]
        done_at: list[float] = []
        subs = [asyncio.create_task(subscriber(port, key, args.events, ready, count, args.subscribers, done_at)) for _ in range(args.subscribers)]
        await asyncio.wait_for(ready.wait(), 30)
        specs = [{"name": f"e-{i}", "start": False, "resources": {"cpu": 1, "ramMb": 128, "diskGb": 1}} for i in range(args.events)]
        t0 = time.perf_counter()
        r = await client.post("/api/v1/vms", json=specs)
        accepted = time.perf_counter() - t0
        assert r.status_code == 202, r.text
        await asyncio.wait_for(asyncio.gather(*subs), 120)
        last = max(done_at) - t0
        first = min(done_at) - t0
        print(
            f"event fan-out: {args.events} VM events to {args.subscribers} SSE subscribers: last subscriber complete "
            f"after {last:.2f} s (first after {first:.2f} s; the POST committing them answered in {accepted:.2f} s) (target < 2 s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
