"""What every benchmark shares: its own `vmplane serve` process, on a free port, with a fresh
data dir, and a client holding the owner key that server wrote; a bulk create through it; and
latency measured by wrk."""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

PY_SPY = "py-spy==0.4.3"  # as pinned in pyproject.toml's `bench` extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchServer:
    def __init__(self, url: str, port: int, data: Path, key: str, client: httpx.AsyncClient, pid: int = 0) -> None:
        self.url, self.port, self.data, self.key, self.client, self.pid = url, port, data, key, client, pid


NO_RATE_LIMITS = {
    # measure the server, not the per-key or per-organization limit (a 429 answers faster
    # than any real request: a limit left on would inflate every figure)
    "VMPLANE_RATE_LIMIT_PER_SECOND": "1000000",
    "VMPLANE_RATE_LIMIT_BURST": "1000000",
    "VMPLANE_ORG_RATE_LIMIT_PER_SECOND": "1000000",
    "VMPLANE_ORG_RATE_LIMIT_BURST": "1000000",
}


@asynccontextmanager
async def process(
    cmd: list[str], url: str, ready: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[subprocess.Popen[bytes], httpx.AsyncClient]]:
    """Run `cmd` (a server listening at `url`) until the block ends; yields (the process, a
    client of it) once GET `ready` answers 200."""
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for _ in range(1200):
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:4]} exited")
                try:
                    if (await client.get(ready)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            yield proc, client
    finally:
        proc.terminate()
        proc.wait()


@asynccontextmanager
async def server(
    args: list[str], env: dict[str, str] | None = None, prefix: str = "vmplane-bench-", port: int = 0
) -> AsyncIterator[BenchServer]:
    """Serve vmplane with `args` (after `serve --port --data-dir`) on `port` (0: a free one);
    yields once it is ready."""
    port = port or free_port()
    data = Path(tempfile.mkdtemp(prefix=prefix))
    cmd = [sys.executable, "-m", "vmplane.cli.main", "serve", "--port", str(port), "--data-dir", str(data), "--log-level", "warning", *args]
    url = f"http://127.0.0.1:{port}"
    async with process(cmd, url, "/readyz", {**NO_RATE_LIMITS, **(env or {})}) as (proc, client):
        key = (data / "admin-api-key").read_text().strip()
        client.headers["X-API-Key"] = key
        yield BenchServer(url, port, data, key, client, proc.pid)


async def bulk_create(client: httpx.AsyncClient, vms: int, batch: int) -> tuple[list[str], set[str], float, float]:
    """Create `vms` sim VMs (1 vCPU, 1 GiB, 10 GB) in bulk requests of at most `batch`, sent
    all at once, and wait for every job to end: (the VMs' ids, the jobs' end states, seconds
    until every request was accepted, seconds until every job had ended)."""
    specs = [{"name": f"b-{i}", "resources": {"cpu": 1, "ramMb": 1024, "diskGb": 10}} for i in range(vms)]
    batches = [specs[i : i + batch] for i in range(0, len(specs), batch)]
    t0 = time.perf_counter()
    responses = await asyncio.gather(*(client.post("/api/v1/vms", json=b) for b in batches))
    for r in responses:
        assert r.status_code == 202, r.text
    accepted = time.perf_counter() - t0
    states = set()
    for r in responses:
        while True:
            job = (await client.get(f"/api/v1/jobs/{r.json()['jobId']}")).json()
            if job["state"] not in ("queued", "running"):
                states.add(job["state"])
                break
            await asyncio.sleep(0.25)
    took = time.perf_counter() - t0
    return [v for r in responses for v in r.json()["vmIds"]], states, accepted, took


def wrk_latency(url: str, paths: list[str], connections: int, seconds: int, key: str | None) -> tuple[float, float, float]:
    """p50 and p99 in ms and requests/s, measured by wrk (a C load generator: a Python client
    on the same two cores would measure itself), one thread, `connections` connections, each
    request for one of `paths` at random; `key` is sent as X-API-Key."""
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n")
        f.write("request = function() return wrk.format('GET', paths[math.random(#paths)]) end\n")
    auth = ["-H", f"X-API-Key: {key}"] if key else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *auth, "-s", f.name, url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    os.unlink(f.name)
    refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert refused is None, f"{refused.group(1)} answers were not 2xx: the figures would measure refusals, not the server\n{out}"

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return ms("50%"), ms("99%"), rps


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PY_SPY], check=True)
        found = str(Path(sys.executable).parent / "py-spy")
    return found


@contextmanager
def profiled(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples process `pid` while the block runs; out: its collapsed stacks (one per
    line with its sample count), then the functions in most samples (self and total) printed."""
    spy = subprocess.Popen([ensure_py_spy(), "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        spy.wait()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # a function, not its lines
        samples += int(n)
        own[frames[-1]] += int(n)
        for f in set(frames):
            total[f] += int(n)
    print(f"  {out}: {samples} samples; most in the function itself:")
    for f, n in own.most_common(15):
        print(f"    {100 * n / samples:5.1f} %  {f}")
    print("  most including what they call:")
    for f, n in total.most_common(40):
        print(f"    {100 * n / samples:5.1f} %  {f}")
