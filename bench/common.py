"""What every benchmark shares: its own `vmplane serve` process, on a free port, with a fresh
data dir, and a client holding the owner key that server wrote."""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx


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
async def server(
    args: list[str], env: dict[str, str] | None = None, prefix: str = "vmplane-bench-", port: int = 0
) -> AsyncIterator[BenchServer]:
    """Serve vmplane with `args` (after `serve --port --data-dir`) on `port` (0: a free one);
    yields once it is ready."""
    port = port or free_port()
    data = Path(tempfile.mkdtemp(prefix=prefix))
    full_env = {**os.environ, **NO_RATE_LIMITS, **(env or {})}
    cmd = [sys.executable, "-m", "vmplane.cli.main", "serve", "--port", str(port), "--data-dir", str(data), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for _ in range(1200):
                if proc.poll() is not None:
                    raise RuntimeError("vmplane serve exited")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            key = (data / "admin-api-key").read_text().strip()
            client.headers["X-API-Key"] = key
            yield BenchServer(url, port, data, key, client, proc.pid)
    finally:
        proc.terminate()
        proc.wait()
