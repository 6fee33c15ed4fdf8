"""Helpers for the HyperSDK face's tests: a real HTTP webhook receiver, the doc's example
bodies, the checks HyperSDK's published Python client makes when it parses answers, and a
client that talks to the face as the daemon's clients do."""

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

import httpx

P = "/compat/hypersdk"
FORMATS = ("ovf", "ova", "qcow2", "raw", "vmdk")
EXPORT_METHODS = ("", "ctl", "govc", "ovftool", "web")
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
PROGRESS_FIELDS = {"phase", "current_file", "current_step", "files_downloaded", "total_files", "bytes_downloaded", "bytes_transferred",
                   "total_bytes", "percent_complete", "estimated_remaining", "export_method"}  # fmt: skip


def doc_job(vcenter: str = "127.0.0.1:1", vm_path: str = "Datacenter/vm/production/web-server-1") -> dict[str, Any]:
    """The document's submit example (its vCenter made one the test controls)."""
    return {
        "vm_path": vm_path,
        "source": {"type": "vsphere", "vcenter_url": vcenter, "username": "admin@vsphere.local", "password": "password", "datacenter": "Datacenter"},
        "destination": {"type": "kvm", "libvirt_uri": "qemu+ssh://user@host/system"},
        "options": {"conversion_method": "vddk", "network_mapping": {"VM Network": "br0"}},
    }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def check_client_job(data: dict[str, Any]) -> None:
    """What hypersdk.models.Job.from_dict needs of a job (PEERS.md)."""
    d = data["definition"]
    assert isinstance(d["vm_path"], str)
    assert d.get("format", "ovf") in FORMATS and d.get("export_method", "") in EXPORT_METHODS
    assert data["status"] in STATUSES
    parse_time(data["updated_at"])
    for key in ("started_at", "completed_at"):
        if data.get(key):
            parse_time(data[key])
    p = data["progress"]
    assert isinstance(p["phase"], str)
    assert {"stage", "percent_complete", "current_bytes", "total_bytes", "bytes_transferred"} <= set(p)
    assert "result" not in data or {"vm_name", "output_dir", "ovf_path", "total_size", "duration", "success"} <= set(data["result"])
    assert "password" not in json.dumps(d)


def check_client_status(data: dict[str, Any]) -> None:
    """What hypersdk.models.DaemonStatus.from_dict needs."""
    for key in ("version", "uptime", "total_jobs", "running_jobs", "completed_jobs", "failed_jobs", "cancelled_jobs", "timestamp"):
        assert key in data, key
    parse_time(data["timestamp"])
    assert isinstance(data["uptime"], str)


class DaemonClient:
    """A client of the daemon as HyperSDK's published Python client and the document's examples
    talk to it: every URL is `urljoin(base_url, "/path")` (whatever path the base URL had is
    dropped), and a key is sent (`X-API-Key`) only when one is given — the document's clients
    have none ("no authentication"). Answers are parsed as the Python client parses them."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(headers={"X-API-Key": api_key} if api_key else {}, timeout=30)

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    async def submit(self, definition: dict[str, Any]) -> httpx.Response:
        return await self.http.post(self.url("/jobs/submit"), json=definition)

    async def submit_job(self, definition: dict[str, Any]) -> str:
        r = await self.submit(definition)
        assert r.status_code == 201, r.text
        data = r.json()
        assert data["accepted"] == 1 and len(data["job_ids"]) == 1
        return str(data["job_ids"][0])

    async def get_job(self, job_id: str) -> dict[str, Any]:
        r = await self.http.get(self.url(f"/jobs/{job_id}"))
        assert r.status_code == 200, r.text
        check_client_job(r.json())
        return dict(r.json())

    async def list_jobs(self) -> list[dict[str, Any]]:
        r = await self.http.get(self.url("/jobs/query"), params={"all": "true"})
        assert r.status_code == 200, r.text
        for job in r.json()["jobs"]:
            check_client_job(job)
        return list(r.json()["jobs"])

    async def status(self) -> dict[str, Any]:
        r = await self.http.get(self.url("/status"))
        assert r.status_code == 200, r.text
        check_client_status(r.json())
        return dict(r.json())

    async def aclose(self) -> None:
        await self.http.aclose()


@dataclass
class Receiver:
    """A webhook receiver: a real HTTP server on loopback that records what it is sent."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: Any = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> "Receiver":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            method, path, _ = line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = h.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"method": method, "path": path, "headers": headers, "body": json.loads(body) if body else None})
            self._arrived.set()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()

    async def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The first request whose body's `event` is `event`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for r in self.requests:
                if (r["body"] or {}).get("event") == event:
                    return r
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {event} delivery in {timeout} s; got {[(r['body'] or {}).get('event') for r in self.requests]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))
            except TimeoutError:
                pass
