"""iso-import: fetch an ISO from its URL through the outbound policy (jobs/handlers/template_import.py's
`download`: each redirect checked again, stopped at `VMPLANE_MAX_DOWNLOAD_BYTES`), then offer it
only if its sha256 is the one asked and it is an ISO 9660 image, and its organization's diskGb
quota has room for it. The file is `<data dir>/isos/<iso id>.iso` (store/isos.py `iso_path`)."""

import os
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...errors import VmplaneError
from ...store import isos as iso_q
from ...store import tenancy as t_q
from ..engine import TaskContext
from .base import BaseHandler
from .template_import import download

GIB = 1 << 30


class IsoImport(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        async with deps.store.read() as conn:
            iso = await iso_q.get_iso(conn, ctx.resource_id)
        if iso is None:
            raise VmplaneError(f"ISO {ctx.resource_id} no longer exists")
        if iso.source_url is None:
            raise VmplaneError(f"ISO {iso.id} has no source URL to fetch")
        isos_dir = deps.data_dir / iso_q.ISOS_DIR
        dest, part = iso_q.iso_path(isos_dir, iso.id), iso_q.iso_path(isos_dir, iso.id, ".part")
        ctx.log(f"Starting import of ISO {iso.name} from {iso.source_url}")
        digest = await download(ctx, iso.source_url, part, "the ISO")
        expected = ctx.payload.get("sha256")
        if expected and expected != digest:
            raise VmplaneError(f"sha256 mismatch: the download's sha256 is {digest}, not {expected}")
        if not iso_q.is_iso9660(part):
            raise VmplaneError(f"the download is not an ISO 9660 image (no CD001 signature at byte {iso_q.ISO9660_OFFSET})")
        size = part.stat().st_size
        await ctx.progress(90, f"checked: an ISO 9660 image of {size} bytes")
        async with deps.store.write() as conn:
            if iso.org_id is not None:
                await self._check_room(conn, iso.org_id, size)
            os.replace(part, dest)
            await iso_q.set_iso(conn, iso.id, status="ready", size_bytes=size, sha256=digest, error=None, updated_at=clock.now())
        ctx.log(f"ready: {size} bytes, sha256 {digest[:16]}…")

    @staticmethod
    async def _check_room(conn: AsyncConnection, org_id: str, size: int) -> None:
        """The organization's diskGb quota must have room for the ISO (it counts from now on)."""
        org = await t_q.get_org(conn, org_id, lock=conn.dialect.name == "postgresql")
        limit = org.quotas.get("diskGb") if org is not None and org.quotas else None
        if limit is None:
            return
        used = int((await t_q.org_usage(conn, org_id)).disk_gb)
        if used * GIB + size > int(limit) * GIB:
            raise VmplaneError(
                f"quota exceeded: the ISO ({size} bytes) is larger than the {max(0, int(limit) - used)} GiB the diskGb quota leaves free"
            )

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        isos_dir = ctx.deps.data_dir / iso_q.ISOS_DIR
        for suffix in (".part", ".iso"):
            iso_q.iso_path(isos_dir, ctx.resource_id, suffix).unlink(missing_ok=True)
        async with ctx.deps.store.write() as conn:
            if cancelled:
                await iso_q.delete_iso(conn, ctx.resource_id)
            else:
                await iso_q.set_iso(conn, ctx.resource_id, status="error", error=error, updated_at=clock.now())

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await iso_q.delete_iso(conn, task.resource_id)
