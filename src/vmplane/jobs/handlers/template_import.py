"""template-create: download an image (http, https or file), checksum it, import it on a node.
An http(s) download goes through the outbound policy (outbound.py): each redirect is checked
again, and it stops at `VMPLANE_MAX_DOWNLOAD_BYTES`. An uploaded image (payload `upload`,
services/templates.py `upload`) is already here, as `<images dir>/<template id>.upload`
(a replica with another data dir hands the task back for the one that received it, payload
`home`): it takes the download's place, and the rest is the same (the driver's `import_image`, which
runs it through intake)."""

import asyncio
import hashlib
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock, outbound
from ...domain import Template
from ...errors import VmplaneError
from ...store import templates as tpl_q
from ..engine import HandOff, TaskContext
from .base import BaseHandler

CHUNK = 4 * 1024 * 1024


class TemplateImport(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        async with deps.store.read() as conn:
            tpl = await tpl_q.get_template(conn, ctx.resource_id)
        if tpl is None:
            raise VmplaneError(f"template {ctx.resource_id} no longer exists")
        dest = deps.images_dir / f"{tpl.id}.img"
        part = dest.with_suffix(".part")
        if ctx.payload.get("upload"):
            if ctx.payload.get("home", deps.home.home) != deps.home.home:  # another replica's data dir has the file
                raise HandOff("the uploaded file is in the data dir of the replica that received it")
            ctx.log(f"Starting import of {tpl.name} from its uploaded file")
            uploaded = dest.with_suffix(tpl_q.UPLOAD_SUFFIX)
            if uploaded.exists() or not dest.exists():  # (a retry finds it renamed already)
                os.replace(uploaded, part)
            else:
                os.replace(dest, part)
            digest = str(ctx.payload["sha256"])
            await ctx.progress(75, f"received {part.stat().st_size} bytes")
        elif tpl.source_url is None:
            raise VmplaneError(f"template {tpl.id} has no source URL to import from")
        else:
            ctx.log(f"Starting import of {tpl.name} from {tpl.source_url}")
            digest = await download(ctx, tpl.source_url, part, "the image")
        expected = ctx.payload.get("checksum")
        if expected and expected.lower() != digest:
            raise VmplaneError(f"checksum mismatch: the download's sha256 is {digest}, not {expected.lower()}")
        os.replace(part, dest)
        if ctx.payload.get("initramfsOf"):
            await self._as_initramfs(ctx, tpl, dest, digest)
            return
        node_id = tpl.node_id or self._any_node(ctx)

        async def report(pct: int, message: str) -> None:
            await ctx.progress(80 + pct // 5, message)

        info = await deps.registry.driver(node_id).import_image(tpl.id, dest, report)
        deps.registry.images_on[node_id][tpl.id] = (str(info.path), None)
        async with deps.store.write() as conn:
            await tpl_q.set_template(
                conn,
                tpl.id,
                status="ready",
                format=info.format,
                size_mb=max(1, math.ceil(info.virtual_size / 2**20)),
                image_path=str(dest),
                checksum=f"sha256:{digest}",
                error=None,
                updated_at=clock.now(),
            )
        ctx.log(f"ready: {info.format}, {info.virtual_size} bytes, sha256 {digest[:16]}…")

    async def _as_initramfs(self, ctx: TaskContext, tpl: Template, dest: Path, digest: str) -> None:
        """An initramfs boots with the kernel, command line and disk of another template."""
        async with ctx.deps.store.read() as conn:
            base = await tpl_q.get_template(conn, ctx.payload["initramfsOf"])
        if base is None or not base.boot or base.image_path is None:
            raise VmplaneError(f"template {ctx.payload['initramfsOf']} has no kernel to boot an initramfs with")
        async with ctx.deps.store.write() as conn:
            await tpl_q.set_template(
                conn, tpl.id, status="ready", format=base.format, size_mb=base.size_mb, image_path=base.image_path,
                boot={**base.boot, "initrd": str(dest)}, checksum=f"sha256:{digest}", error=None, updated_at=clock.now(),
            )  # fmt: skip
        ctx.log(f"ready: initramfs of {dest.stat().st_size} bytes, sha256 {digest[:16]}…, booted with {base.name}'s kernel")

    @staticmethod
    def _any_node(ctx: TaskContext) -> str:
        """A node to validate the image on: a local one first (no copy to make), else an
        online node run by an agent (the image is sent to it)."""
        items = ctx.deps.registry.items()
        usable = [n for n, d in items if d.offline is None]
        local = [n for n, d in items if d.capabilities.local]
        if not usable:
            raise VmplaneError("no online node can validate the image")
        return (local or usable)[0]

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        deps = ctx.deps
        for suffix in (".part", ".img", tpl_q.UPLOAD_SUFFIX):
            (deps.images_dir / f"{ctx.resource_id}{suffix}").unlink(missing_ok=True)
        async with deps.store.write() as conn:
            if cancelled:
                await tpl_q.delete_template(conn, ctx.resource_id)
            else:
                await tpl_q.set_template(conn, ctx.resource_id, status="error", error=error, updated_at=clock.now())

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await tpl_q.delete_template(conn, task.resource_id)


async def download(ctx: TaskContext, url: str, part: Path, what: str) -> str:
    """Fetch `url` (http or https through the outbound policy, or file) into `part`, reporting
    progress up to 75%; returns its sha256 (hex). Stops at `VMPLANE_MAX_DOWNLOAD_BYTES`."""
    parsed = urlparse(url)
    sha = hashlib.sha256()
    done = 0
    last_pct = -1
    total: int | None

    async def advance(chunk: bytes, total: int | None) -> None:
        nonlocal done, last_pct
        sha.update(chunk)
        done += len(chunk)
        pct = int(done * 75 / total) if total else min(70, done // CHUNK)
        if pct != last_pct:
            last_pct = pct
            await ctx.progress(pct, f"downloaded {done} of {total or '?'} bytes")

    part.parent.mkdir(parents=True, exist_ok=True)
    with part.open("wb") as out:
        if parsed.scheme == "file":
            src = Path(unquote(parsed.path))
            try:
                total = src.stat().st_size
                fh = src.open("rb")
            except OSError as exc:
                raise VmplaneError(f"cannot read {src}: {exc.strerror}") from exc
            with fh:
                while chunk := await asyncio.to_thread(fh.read, CHUNK):
                    out.write(chunk)
                    await advance(chunk, total)
        else:
            limit = ctx.deps.outbound.max_download_bytes
            try:
                async with ctx.deps.outbound.client(timeout=httpx.Timeout(30.0, connect=15.0)) as client:
                    async with outbound.opened(client, "GET", url) as resp:
                        if resp.status_code != 200:
                            raise VmplaneError(f"download failed: {url} answered HTTP {resp.status_code}")
                        total = int(resp.headers.get("content-length") or 0) or None
                        async for chunk in outbound.aiter_limited(resp, limit, what, CHUNK):
                            out.write(chunk)
                            await advance(chunk, total)
            except httpx.HTTPError as exc:
                raise VmplaneError(f"download failed: {outbound.describe(exc)}") from None
    if done == 0:
        raise VmplaneError("the source is empty")
    return sha.hexdigest()
