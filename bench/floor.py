"""vmplane's reads beside the floor: a bare FastAPI app on uvicorn (uvloop + httptools, one
worker) that reads the same VMs from SQLite, measured by the same wrk runs in the same run.

    .venv/bin/python bench/floor.py [--vms 10000] [--nodes 1000] [--seconds 10] [--rounds 2]
    .venv/bin/python bench/floor.py --vms 2000 --nodes 200 --seconds 5 --rounds 1   # quicker
    .venv/bin/python bench/floor.py --profile /tmp/prof   # then py-spy on vmplane under wrk

vmplane (sim driver) gets `--vms` VMs by bulk create; their native documents (as
`GET /api/v1/vms` renders them) are copied into a SQLite file of the floor's, one row each:
`(id TEXT PRIMARY KEY, doc TEXT)`. The floor answers
- `GET /vms/{id}`: one row by id, its JSON text parsed and answered with FastAPI's
  `JSONResponse` (404 when there is none);
- `GET /vms?limit=50`: a page of 50 rows in id order, the same way, as
  `{"items": [...], "nextPageToken": ...}`;
through stdlib `sqlite3` in `async def` endpoints (on the event loop: the fastest way
measured here, FIELD-NOTES.md), with no middleware, authentication, limits or metrics. So the
floor does what any server of JSON records must do (route, read, parse, render, send) and
nothing a control plane adds; its documents are vmplane's own, byte for byte.

Each round measures, one after the other: floor GET, vmplane GET, floor list, vmplane list
(`wrk -t1 -c16`, `--seconds` each; the GETs spread over 500 of the VMs). Printed: each
figure per round, then the ratio vmplane / floor of requests/s for the single GET and the
list, from the medians over the rounds, with p99 beside each, and the load average before and
after (the machine is shared: compare ratios, not absolute figures, across runs). Beside
requests/s, each server's CPU time per request (its process's user + system time over the
run, from /proc, divided by the requests answered), and the ratio floor / vmplane of those:
what each request costs the server, which other load on the machine moves far less than it
moves throughput (on an idle machine with a core to each side, the two ratios agree).

`--profile DIR`: after the measured rounds, one more wrk run of each vmplane read under
`py-spy record` (installed into this Python with pip if missing; pinned in pyproject.toml's
`bench` extra), writing DIR/get.txt and DIR/list.txt (collapsed stacks, one per line with its
sample count) and a summary of the functions holding most samples.
"""

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bulk_create, cpu_seconds, free_port, process, profiled, server, wrk_latency  # noqa: E402


def floor_app(db: str) -> FastAPI:
    """The floor: FastAPI, stdlib sqlite3, nothing else."""
    app = FastAPI()
    conn = sqlite3.connect(db, check_same_thread=False)

    @app.get("/vms/{vm_id}")
    async def get_vm(vm_id: str) -> JSONResponse:
        row = conn.execute("SELECT doc FROM vms WHERE id = ?", (vm_id,)).fetchone()
        if row is None:
            raise HTTPException(404, "no such VM")
        return JSONResponse(json.loads(row[0]))

    @app.get("/vms")
    async def list_vms(limit: int = Query(50, ge=1, le=500), pageToken: str = Query("", max_length=200)) -> JSONResponse:
        rows = conn.execute("SELECT id, doc FROM vms WHERE id > ? ORDER BY id LIMIT ?", (pageToken, limit)).fetchall()
        token = rows[-1][0] if len(rows) == limit else None
        return JSONResponse({"items": [json.loads(doc) for _, doc in rows], "nextPageToken": token})

    return app


def serve_floor(db: str, port: int) -> None:
    uvicorn.run(
        floor_app(db), host="127.0.0.1", port=port, loop="uvloop", http="httptools", workers=1, log_level="warning", access_log=False
    )


async def copy_documents(client: object, db: str) -> int:
    """Every VM's native document, read through vmplane's own list, into the floor's table."""
    docs: list[tuple[str, str]] = []
    token = None
    while True:
        params = {"limit": 500} | ({"pageToken": token} if token else {})
        page = (await client.get("/api/v1/vms", params=params)).json()  # type: ignore[attr-defined]
        docs += [(d["id"], json.dumps({k: v for k, v in d.items() if k != "stats"})) for d in page["items"]]
        token = page["nextPageToken"]
        if not token:
            break
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE vms (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        conn.executemany("INSERT INTO vms VALUES (?, ?)", docs)
    return len(docs)


def measured(pid: int, url: str, paths: list[str], connections: int, seconds: int, key: str | None) -> tuple[float, float, float, float]:
    """wrk's p50 and p99 (ms) and requests/s, and the server's CPU µs per request."""
    cpu = cpu_seconds(pid)
    p50, p99, rps = wrk_latency(url, paths, connections, seconds, key)
    return p50, p99, rps, (cpu_seconds(pid) - cpu) / (rps * seconds) * 1e6


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000, help="VMs per bulk request (at most the server's VMPLANE_MAX_BULK)")
    ap.add_argument("--seconds", type=int, default=10, help="of each wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="of the four wrk runs")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR", help="then profile vmplane's two reads with py-spy into DIR")
    ap.add_argument("--serve-floor", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    return ap.parse_args()


async def main(args: argparse.Namespace) -> None:
    print(f"load average at the start: {loadavg()}")
    env = {"VMPLANE_JOB_CONCURRENCY": os.environ.get("VMPLANE_JOB_CONCURRENCY", "256")}
    async with server(["--driver", "sim", "--sim-nodes", str(args.nodes)], env) as srv:
        ids, states, _, took = await bulk_create(srv.client, args.vms, args.batch)
        assert states == {"succeeded"}, states
        print(f"vmplane: {args.vms} VMs on {args.nodes} sim nodes made in {took:.1f} s")
        with tempfile.TemporaryDirectory(prefix="vmplane-floor-") as tmp:
            db = str(Path(tmp) / "floor.db")
            print(f"floor: {await copy_documents(srv.client, db)} documents copied into {db}")
            port = free_port()
            floor_cmd = [sys.executable, __file__, "--serve-floor", db, str(port)]
            async with process(floor_cmd, f"http://127.0.0.1:{port}", "/vms?limit=1") as (floor_proc, _):
                floor_url = f"http://127.0.0.1:{port}"
                sample = ids[:: max(1, len(ids) // 500)]
                runs = {
                    "floor GET": (floor_proc.pid, floor_url, [f"/vms/{v}" for v in sample], None),
                    "vmplane GET": (srv.pid, srv.url, [f"/api/v1/vms/{v}" for v in sample], srv.key),
                    "floor list": (floor_proc.pid, floor_url, ["/vms?limit=50"], None),
                    "vmplane list": (srv.pid, srv.url, ["/api/v1/vms?limit=50"], srv.key),
                }
                figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in runs}
                for r in range(args.rounds):
                    for name, (pid, url, paths, key) in runs.items():
                        p50, p99, rps, cpu_us = measured(pid, url, paths, args.concurrency, args.seconds, key)
                        figures[name].append((p50, p99, rps, cpu_us))
                        print(
                            f"round {r + 1} {name:13s} p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  {rps:6.0f} req/s  {cpu_us:5.0f} µs CPU/request   (load {loadavg()})"
                        )

                def median(name: str, i: int) -> float:
                    return statistics.median(f[i] for f in figures[name])

                for what, target in (("GET", "GET /api/v1/vms/{id}"), ("list", "GET /api/v1/vms?limit=50")):
                    f_rps, v_rps = median(f"floor {what}", 2), median(f"vmplane {what}", 2)
                    f_cpu, v_cpu = median(f"floor {what}", 3), median(f"vmplane {what}", 3)
                    print(f"{target}: vmplane / floor = {v_rps / f_rps:.2f} ({v_rps:.0f} / {f_rps:.0f} req/s); "
                          f"p99 vmplane {median(f'vmplane {what}', 1):.1f} ms, floor {median(f'floor {what}', 1):.1f} ms; "
                          f"CPU per request floor / vmplane = {f_cpu / v_cpu:.2f} ({f_cpu:.0f} / {v_cpu:.0f} µs)")  # fmt: skip
                print(f"load average at the end: {loadavg()}")
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    for name, file in (("vmplane GET", "get.txt"), ("vmplane list", "list.txt")):
                        pid, url, paths, key = runs[name]
                        with profiled(pid, args.profile / file):
                            wrk_latency(url, paths, args.concurrency, args.seconds, key)


if __name__ == "__main__":
    args = parse()
    if args.serve_floor:
        serve_floor(args.serve_floor[0], int(args.serve_floor[1]))
    else:
        asyncio.run(main(args))
