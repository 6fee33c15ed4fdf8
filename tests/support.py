"""Test support: settings in a temporary data dir, a real HTTP server on loopback, and
PostgreSQL databases when `VMPLANE_TEST_PG_URL` points at a server."""

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from vmplane.app import create_app
from vmplane.cli import serving
from vmplane.config import Settings
from vmplane.store import db

PG_URL = os.environ.get("VMPLANE_TEST_PG_URL")  # postgresql+asyncpg://user@host:port/postgres
REQUIRE_PG = os.environ.get("VMPLANE_REQUIRE_PG") == "1"


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `cond` (a plain function) until it returns something true, which is returned;
    fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def new_pg_database(schema: bool = False) -> str:
    """Create a database on the test server; returns its SQLAlchemy URL. Empty, or with
    `schema` already at the newest revision (a copy of a template migrated once per run: a
    server then starts "up to date" instead of running every migration again)."""
    import asyncpg

    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("VMPLANE_REQUIRE_PG=1 but VMPLANE_TEST_PG_URL is not set")
        pytest.skip("no PostgreSQL (set VMPLANE_TEST_PG_URL)")
    template = await _pg_schema_template() if schema else None
    name = "vmp_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return PG_URL.rsplit("/", 1)[0] + "/" + name


_schema_templates: dict[str, Any] = {}


async def _pg_schema_template() -> str:
    if "pg" not in _schema_templates:
        url = await new_pg_database()
        engine = create_async_engine(url, poolclass=NullPool)  # no connection left open: a template must have none
        try:
            async with engine.begin() as conn:
                await conn.run_sync(db.upgrade)
        finally:
            await engine.dispose()
        _schema_templates["pg"] = url.rsplit("/", 1)[1]
    name: str = _schema_templates["pg"]
    return name


def sqlite_with_schema(path: Path) -> Path:
    """Put at `path` (unless something is there) a SQLite database at the newest revision,
    copied from one migrated once per run; its directory is made private as a server's is."""
    if "sqlite" not in _schema_templates:
        where = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmplane-schema-{os.getpid()}"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(mode=0o700)
        atexit.register(shutil.rmtree, where, True)
        engine = create_engine(f"sqlite+pysqlite:///{where / 'vmplane.db'}", poolclass=NullPool)
        with engine.begin() as conn:
            db.upgrade(conn)
        engine.dispose()
        _schema_templates["sqlite"] = where / "vmplane.db"
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(_schema_templates["sqlite"], path)
        path.chmod(0o600)
    return path


LOOPBACK_ALLOW = ["127.0.0.0/8", "::1/128"]
"""The outbound allow-list of test servers: the tests' image, plugin, webhook, import and
vCenter servers listen on loopback. tests/security/ passes `outbound_allow=[]` (the default)."""


def make_settings(tmp_path: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "outbound_allow": LOOPBACK_ALLOW,
        "data_dir": tmp_path / "data",
        "driver": "sim",
        "sim_nodes": 3,
        "sim_latency_ms": 5,
        "lease_seconds": 5.0,
        "rate_limit_per_second": 100_000.0,  # tests hammer the API; test_tenancy checks the limit itself
        "rate_limit_burst": 100_000,
        "org_rate_limit_per_second": 100_000.0,  # the same for organizations; tests/security/test_fair_limits checks it
        "org_rate_limit_burst": 100_000,
        "address_rate_limit_per_second": 100_000.0,  # tests send many anonymous requests; tests/security/test_abuse checks it
        "address_rate_limit_burst": 100_000,
    }
    values.update(overrides)
    if not values.get("database_url"):
        sqlite_with_schema(Path(values["data_dir"]) / "vmplane.db")
    return Settings(**values)


class Server:
    """vmplane served by uvicorn on a loopback port, inside the test's event loop."""

    def __init__(self, settings: Settings, nodes: Any = None) -> None:
        self.app = create_app(settings, nodes)
        self.rt = self.app.state.rt
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the configuration `vmplane serve` runs with (header timeout, shutdown that ends streams)
        self._server = serving.Server(serving.server_config(self.app, settings, "warning", host="127.0.0.1", port=self.port), self.rt)
        self._task: asyncio.Task[None] | None = None
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def start(self) -> "Server":
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.admin_key = admin_key(self.rt.data_dir)
        self.client.headers["X-API-Key"] = self.admin_key
        return self

    def client_with(self, key: str) -> httpx.AsyncClient:
        """Another client of this server, with other credentials."""
        return httpx.AsyncClient(base_url=self.url, timeout=30, headers={"X-API-Key": key})

    async def stop(self) -> None:
        await self.client.aclose()
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    async def wait_job(self, job_id: str, timeout: float = 60, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = (await (client or self.client).get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] in ("succeeded", "failed", "partial", "cancelled"):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")
            await asyncio.sleep(0.05)

    async def create(self, specs: Any, **kw: Any) -> dict[str, Any]:
        """POST /vms and wait for the job; returns the finished job."""
        r = await self.client.post("/api/v1/vms", json=specs, **kw)
        assert r.status_code == 202, r.text
        return await self.wait_job(r.json()["jobId"])


def admin_key(data_dir: Path) -> str:
    """The bootstrap owner key a server wrote into its data dir."""
    return (Path(data_dir) / "admin-api-key").read_text().strip()


def require_qemu() -> None:
    """Skip when QEMU is missing, unless VMPLANE_REQUIRE_QEMU=1 (CI), where it fails."""
    import shutil

    if shutil.which("qemu-system-x86_64") and shutil.which("qemu-img"):
        return
    if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but qemu-system-x86_64 is not installed")
    pytest.skip("qemu-system-x86_64 is not installed")


def qemu_processes_of(vm_id: str) -> list[str]:
    """Command lines of running QEMU processes that belong to this VM."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmd and vm_id in cmd:
            found.append(cmd)
    return found


async def make_template(server: "Server", tmp_path: Path, name: str, **body: Any) -> dict[str, Any]:
    """A ready template `name` imported from a small raw image file (file://)."""
    img = tmp_path / f"{name}.raw"
    img.write_bytes(b"\x55" * 4096)
    r = await server.client.post("/api/v1/templates", json={"name": name, "sourceUrl": f"file://{img}", **body})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    template: dict[str, Any] = (await server.client.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
    return template


async def tiny_template(server: "Server") -> str:
    items = (await server.client.get("/api/v1/templates")).json()["items"]
    return next(t["id"] for t in items if t["name"] == "tiny-linux")


def serve(data_dir: Path, port: int, log: Path, args: list[str], env: dict[str, str] | None = None) -> "subprocess.Popen[bytes]":
    """Start `vmplane serve` as a real process (output appended to `log`)."""
    cmd = [sys.executable, "-m", "vmplane.cli.main", "serve", "--port", str(port), "--data-dir", str(data_dir),
           "--log-level", "warning", *args]  # fmt: skip
    env = {"VMPLANE_OUTBOUND_ALLOW": ",".join(LOOPBACK_ALLOW), **(env or {})}  # as make_settings
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: "subprocess.Popen[bytes]", timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
