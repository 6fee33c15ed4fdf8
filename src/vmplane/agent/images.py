"""A node agent's copies of template files: received from the control plane (pushed, or
fetched from its download endpoint or the template's source URL), verified by SHA-256, kept
under `<data-dir>/images/<template-id>/` and imported into the local driver once (the qemu
driver converts it through `drivers.qemu.intake`, refusing an image that names other files).

A file is complete only once its checksum matched: it is written to `<name>.part` and renamed;
`manifest.json` records the checksum of each complete file. A template's source URL is a
user's: the agent fetches it through the outbound policy (outbound.py: its own allow-list,
`VMPLANE_OUTBOUND_ALLOW` on the agent's host; each redirect checked), never more bytes than the
file's known size; the control plane's download endpoint is vmplane's own link.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from .. import outbound
from ..drivers.base import HypervisorDriver, ImageInfo
from ..drivers.remote_wire import CONTROL_PREFIX, check_id
from ..errors import DriverError, InvalidRequest
from ..http_clients import link_client

log = logging.getLogger("vmplane.agent")

FILE_NAMES = ("disk", "kernel", "initrd")
Progress = Callable[[int, str], Awaitable[None]]


@dataclass
class ControlPlaneLink:
    """How this agent reaches its control plane: base URL and node credential."""

    url: str
    credential: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


@dataclass(frozen=True)
class WantedFile:
    name: str
    sha256: str
    size: int
    path: str | None
    """a download path on the control plane (under CONTROL_PREFIX), sent with the credential"""
    url: str | None
    """an http(s) URL to try first (the template's source), sent without credentials"""

    @classmethod
    def from_wire(cls, name: str, d: Any) -> WantedFile:
        if name not in FILE_NAMES:
            raise InvalidRequest(f"unknown template file {name!r}", field="files")
        if not isinstance(d, dict):
            raise InvalidRequest(f"files.{name} must be an object", field=f"files.{name}")
        sha, size, path, url = d.get("sha256"), d.get("size"), d.get("path"), d.get("url")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidRequest(f"files.{name}.sha256 must be 64 hex digits", field=f"files.{name}.sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"files.{name}.size must be a byte count", field=f"files.{name}.size")
        if path is not None and (not isinstance(path, str) or not path.startswith(CONTROL_PREFIX + "/") or ".." in path):
            raise InvalidRequest(f"files.{name}.path must be a control-plane download path", field=f"files.{name}.path")
        if url is not None and (not isinstance(url, str) or urlparse(url).scheme not in ("http", "https")):
            raise InvalidRequest(f"files.{name}.url must be an http(s) URL", field=f"files.{name}.url")
        return cls(name, sha, size, path, url)


def _shown(url: str) -> str:
    """A URL as errors name it: no query string (it may carry a token)."""
    return urlparse(url)._replace(query="").geturl()


class ImageStore:
    def __init__(self, root: Path, driver: HypervisorDriver, policy: outbound.Policy) -> None:
        self.root = root
        self.driver = driver
        self.policy = policy
        """what a template's source URL may lead to"""
        self.link: ControlPlaneLink | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    def _dir(self, template_id: str) -> Path:
        return self.root / check_id(template_id, "templateId")

    def _lock(self, template_id: str) -> asyncio.Lock:
        return self._locks.setdefault(template_id, asyncio.Lock())

    def _manifest(self, template_id: str) -> dict[str, Any]:
        try:
            data = json.loads((self._dir(template_id) / "manifest.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_manifest(self, template_id: str, manifest: dict[str, Any]) -> None:
        path = self._dir(template_id) / "manifest.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, path)

    def _have(self, template_id: str, name: str, sha256: str) -> bool:
        entry = self._manifest(template_id).get(name)
        return isinstance(entry, dict) and entry.get("sha256") == sha256 and (self._dir(template_id) / name).is_file()

    def _record(self, template_id: str, name: str, sha256: str, size: int) -> None:
        manifest = self._manifest(template_id)
        manifest[name] = {"sha256": sha256, "size": size}
        self._save_manifest(template_id, manifest)

    # -- pushed by the control plane ---------------------------------------------------------

    async def receive(self, template_id: str, name: str, body: AsyncIterator[bytes], sha256: str, size: int | None) -> Path:
        """Store a file the control plane streams to us; checked against `sha256`."""
        if name not in FILE_NAMES:
            raise InvalidRequest(f"unknown template file {name!r}", field="name")
        async with self._lock(template_id):
            d = self._dir(template_id)
            d.mkdir(parents=True, exist_ok=True)
            part = d / f"{name}.part"
            sha = hashlib.sha256()
            done = 0
            try:
                with open(part, "wb") as out:
                    async for chunk in body:
                        sha.update(chunk)
                        done += len(chunk)
                        await asyncio.to_thread(out.write, chunk)
                if sha.hexdigest() != sha256 or (size is not None and done != size):
                    raise DriverError(f"template file {name} arrived damaged: checksum or size mismatch", template_id=template_id)
                os.replace(part, d / name)
            finally:
                part.unlink(missing_ok=True)
            self._record(template_id, name, sha256, done)
            return d / name

    async def import_pushed(self, template_id: str, progress: Progress) -> ImageInfo:
        """Import a received disk into the driver (the qemu driver takes it in through
        `drivers.qemu.intake`: a refused image names why); on failure nothing of it stays."""
        path = self._dir(template_id) / "disk"
        try:
            return await self.driver.import_image(template_id, path, progress)
        except BaseException:
            async with self._lock(template_id):
                shutil.rmtree(self._dir(template_id), ignore_errors=True)
            raise

    # -- fetched by the agent ---------------------------------------------------------------

    async def provide(
        self, template_id: str, files: dict[str, WantedFile], cmdline: str | None, progress: Progress
    ) -> tuple[list[str], tuple[str, dict[str, str] | None] | None]:
        """Make the template's files present (fetching what is missing from its sources) and
        the image imported. Returns (names still missing: no source could give them, result)."""
        if "disk" not in files:
            raise InvalidRequest("a template needs its disk", field="files.disk")
        async with self._lock(template_id):
            d = self._dir(template_id)
            d.mkdir(parents=True, exist_ok=True)
            missing = []
            for f in files.values():
                if self._have(template_id, f.name, f.sha256):
                    continue
                if f.url is None and (f.path is None or self.link is None):
                    missing.append(f.name)
                    continue
                await self._fetch(template_id, f, progress)
            if missing:
                return missing, None
        info = await self.import_pushed(template_id, progress)
        boot = None
        if "kernel" in files:
            boot = {"kernel": str(d / "kernel"), "cmdline": cmdline or ""}
            if "initrd" in files:
                boot["initrd"] = str(d / "initrd")
        return [], (str(info.path), boot)

    async def _fetch(self, template_id: str, f: WantedFile, progress: Progress) -> None:
        part = self._dir(template_id) / f"{f.name}.part"
        errors: list[str] = []
        sources: list[tuple[str, dict[str, str]]] = []
        if f.url is not None:
            sources.append((f.url, {}))
        if f.path is not None and self.link is not None:
            sources.append((self.link.url.rstrip("/") + f.path, self.link.headers()))
        for url, headers in sources:
            try:
                await self._download(url, headers, part, f, progress)
                os.replace(part, self._dir(template_id) / f.name)
                self._record(template_id, f.name, f.sha256, f.size)
                log.info("template %s: %s fetched and verified (%d bytes)", template_id, f.name, f.size)
                return
            except (DriverError, outbound.Refused) as exc:
                errors.append(f"{_shown(url)}: {exc.message}")
            except httpx.HTTPError as exc:
                errors.append(f"{_shown(url)}: {outbound.describe(exc)}")
            except OSError as exc:
                errors.append(f"{_shown(url)}: {exc}")
            finally:
                part.unlink(missing_ok=True)
        raise DriverError(f"cannot fetch the {f.name} of template {template_id}: " + "; ".join(errors), template_id=template_id)

    async def _download(self, url: str, headers: dict[str, str], part: Path, f: WantedFile, progress: Progress) -> None:
        sha = hashlib.sha256()
        done = last = 0
        timeout = httpx.Timeout(30.0, connect=5.0)
        if headers:  # the control plane, with the node's credential: vmplane's own link, no redirects
            client = link_client(timeout=timeout)
        else:  # the template's source URL: the user's
            client = outbound.async_client(self.policy, timeout=timeout)
        async with client:
            async with outbound.opened(client, "GET", url, headers=headers, redirects=0 if headers else outbound.MAX_REDIRECTS) as resp:
                if resp.status_code != 200:
                    raise DriverError(f"HTTP {resp.status_code}")
                with open(part, "wb") as out:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        done += len(chunk)
                        if done > f.size:
                            raise DriverError(f"more than the expected {f.size} bytes")
                        sha.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                        pct = done * 100 // max(1, f.size)
                        if pct >= last + 10:
                            last = pct
                            await progress(pct, f"{f.name}: {done} of {f.size} bytes")
        if done != f.size or sha.hexdigest() != f.sha256:
            raise DriverError("checksum mismatch: the download is not the template's file")

    async def delete(self, template_id: str) -> None:
        await self.driver.delete_image(template_id)
        async with self._lock(template_id):
            await asyncio.to_thread(shutil.rmtree, self._dir(template_id), True)
