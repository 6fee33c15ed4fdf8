"""The ISO library: installer and live CD images VMs boot from their CD-ROM.

An organization's ISOs are its own (counted in its diskGb quota); an operator's are shared
with every organization, read-only to them. An ISO comes as a request body (streamed to disk
through services/uploads.py, checked as it is received) or from a URL fetched by an iso-import
job through the outbound policy (jobs/handlers/iso_import.py). Either way it is offered only
once its sha256 (when given) matches and it is an ISO 9660 image; its file is
`<data dir>/isos/<iso id>.iso`, a name made from a checked id only (`iso_path`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import Principal
from ..domain import Iso
from ..errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound, Reason
from ..store import isos as iso_q
from ..store.isos import ISO9660_OFFSET, UPLOAD_SUFFIX, is_iso9660, iso_path
from . import pages
from .imports import check_url

if TYPE_CHECKING:
    from ..config import Settings
    from ..jobs.engine import JobEngine
    from ..outbound import Outbound
    from ..store import Store
    from .tenancy import TenancyService
    from .uploads import Uploads

ISO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def check_iso_name(name: str) -> None:
    if not ISO_NAME_RE.match(name):
        raise InvalidRequest(f"name {name!r} is not valid: 1-63 letters, digits, '.', '_' or '-' (no path)", field="name")


def check_sha256(value: str | None, field: str = "sha256") -> str | None:
    """The sha256 a file must have, in lower-case hex (None: not asked)."""
    if value is None:
        return None
    if not SHA256_RE.match(value):
        raise InvalidRequest(f"{field} must be 64 hexadecimal digits (a SHA-256)", field=field)
    return value.lower()


def not_an_iso(field: str) -> InvalidRequest:
    return InvalidRequest(f"{field} is not an ISO 9660 image (no CD001 signature at byte {ISO9660_OFFSET})", field=field)


class IsoService:
    def __init__(
        self, *, store: Store, settings: Settings, engine: JobEngine, outbound: Outbound, tenancy: TenancyService, uploads: Uploads,
        isos_dir: Path,
    ) -> None:  # fmt: skip
        self.store = store
        self.settings = settings
        self.engine = engine
        self.outbound = outbound
        self.tenancy = tenancy
        self.uploads = uploads
        self.isos_dir = isos_dir

    def path(self, iso: Iso) -> Path:
        return iso_path(self.isos_dir, iso.id)

    async def get(self, ref: str, who: Principal) -> Iso:
        """An ISO the caller may see, by id or name: its organization's or a shared one
        (another organization's answers 404)."""
        async with self.store.read() as conn:
            iso = await iso_q.find_iso(conn, ref, who.org_id)
        if iso is None:
            raise NotFound(f"iso {ref} does not exist")
        return iso

    async def list(self, who: Principal, *, limit: int, page_token: str | None) -> tuple[Sequence[Iso], str | None]:
        after = pages.decode("isos", page_token)
        async with self.store.read() as conn:
            rows = await iso_q.list_isos(conn, after_seq=after, limit=limit + 1, org_id=who.org_id)
        token = pages.encode("isos", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token

    async def _check_new(self, conn: AsyncConnection, name: str, who: Principal) -> None:
        if await iso_q.name_taken(conn, name, None if who.operator else who.org_id):
            raise Conflict(f"an ISO named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")

    def _row(self, iso_id: str, name: str, who: Principal, **values: object) -> dict[str, object]:
        now = clock.now()
        return {
            "id": iso_id, "name": name, "org_id": None if who.operator else who.org_id, "source_url": None, "size_bytes": 0,
            "sha256": None, "error": None, "created_at": now, "updated_at": now, **values,
        }  # fmt: skip

    async def create(self, *, name: str, source_url: str, sha256: str | None, who: Principal) -> tuple[str, str]:
        """An ISO fetched from `source_url` (http or https) by an iso-import job, through the
        outbound policy (checked now, and again as it connects and at each redirect); returns
        (job id, ISO id). The ISO is `importing` until the job has checked it."""
        check_iso_name(name)
        sha = check_sha256(sha256)
        check_url(source_url, "sourceUrl", ("http", "https"))
        await self.outbound.check(source_url, "sourceUrl")
        iso_id = ids.new_id("iso")
        try:
            async with self.store.write() as conn:
                await self._check_new(conn, name, who)
                await iso_q.insert_iso(conn, self._row(iso_id, name, who, status="importing", source_url=source_url))
                job_id = await self.engine.submit(conn, "iso-import", who, [(iso_id, {"sha256": sha} if sha else {})])
        except IntegrityError:
            raise Conflict(f"an ISO named {name!r} was created at the same time", field="name") from None
        self.engine.wakeup()
        return job_id, iso_id

    async def upload(self, chunks: AsyncIterator[bytes], *, name: str, sha256: str | None, length: int | None, who: Principal) -> Iso:
        """An ISO from the file sent as the request body, streamed to disk as it arrives under
        the limits of every upload (services/uploads.py: the download cap, the room the
        organization's diskGb quota leaves). Offered (`ready`) at once when its sha256 is the
        one asked and it is an ISO 9660 image; otherwise 400 naming `sha256` or `body`, and
        nothing stays behind: no file, no ISO."""
        check_iso_name(name)
        sha = check_sha256(sha256)
        self.uploads.check_length(length, "the ISO")
        async with self.store.read() as conn:
            await self._check_new(conn, name, who)
            room = await self.uploads.room(conn, who)
        iso_id = ids.new_id("iso")
        part = iso_path(self.isos_dir, iso_id, UPLOAD_SUFFIX)
        async with self.uploads.receive(chunks, part, org=who.org_id, room=room, length=length, what="the ISO") as (size, digest):
            if sha is not None and digest != sha:
                raise InvalidRequest(f"sha256 mismatch: the body's sha256 is {digest}, not {sha}", field="sha256")
            if not is_iso9660(part):
                raise not_an_iso("body")
            final = iso_path(self.isos_dir, iso_id)
            try:
                async with self.store.write() as conn:
                    await self._check_new(conn, name, who)
                    if not who.operator:  # counted from its row on: checked again against the quota now that its size is known
                        await self.tenancy.reserve(conn, who.org_id, disk_gb=-(-size // (1 << 30)))
                    await iso_q.insert_iso(conn, self._row(iso_id, name, who, status="ready", size_bytes=size, sha256=digest))
                    part.rename(final)  # before the commit: a row never names a missing file
            except BaseException as exc:
                final.unlink(missing_ok=True)  # the commit failed after the rename: no file without its row
                if isinstance(exc, IntegrityError):
                    raise Conflict(f"an ISO named {name!r} was created at the same time", field="name") from None
                raise
        return await self.get(iso_id, who)

    async def delete(self, ref: str, who: Principal) -> None:
        """Delete an ISO and its file. 409 while a VM's CD-ROM holds it (naming the VMs: eject
        it first); 403 for a shared ISO unless an operator asks; 409 while it is importing."""
        iso = await self.get(ref, who)
        if iso.shared and not who.operator:
            raise Forbidden(f"ISO {iso.name} is shared by the operators; only they delete it")
        async with self.store.write() as conn:
            held = await iso_q.holders(conn, iso.id)
            if held:
                names = ", ".join(f"{name} ({vm_id})" for vm_id, name in held)
                raise Conflict(f"ISO {iso.name} is in the CD-ROM of {names}: eject it first", vms=[vm_id for vm_id, _ in held])
            if iso.status == "importing":
                raise InvalidState(f"ISO {iso.name} is still importing; cancel its job instead", current="importing")
            await iso_q.delete_iso(conn, iso.id)
        for suffix in (".iso", ".part", UPLOAD_SUFFIX):
            iso_path(self.isos_dir, iso.id, suffix).unlink(missing_ok=True)

    async def sweep(self) -> tuple[str, ...]:
        """Remove what a stopped server left half-written: uploads (`<id>.upload`, whose ISO row
        is made only once the whole body is checked) quiet for two body timeouts (a replica
        sharing this data dir may be receiving one), and downloads (`<id>.part`) of ISOs no
        longer importing. Returns the names removed (run at start)."""
        removed: tuple[str, ...] = ()
        if not self.isos_dir.exists():
            return removed
        quiet_since = time.time() - 2 * self.settings.body_timeout_seconds
        async with self.store.read() as conn:
            for path in sorted(self.isos_dir.iterdir()):
                iso_id, suffix = path.stem, path.suffix
                if suffix not in (UPLOAD_SUFFIX, ".part"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if suffix == UPLOAD_SUFFIX and path.stat().st_mtime > quiet_since:
                        continue
                    iso = await iso_q.get_iso(conn, iso_id)
                    if suffix == UPLOAD_SUFFIX or iso is None or iso.status != "importing":
                        path.unlink()
                        removed += (path.name,)
        return removed

    async def from_url(self, source_url: str, who: Principal, field: str) -> str:
        """The id of an ISO of the caller's organization fetched from `source_url`: one it
        already has (ready or importing) from that URL, else a new iso-import (the URL checked
        as `create` does, errors naming `field`). For faces whose VM requests carry an ISO URL
        (Blue Lobster's `iso_url`): a VM create may name the ISO while it is importing, and
        its create job waits for it."""
        async with self.store.read() as conn:
            rows = await iso_q.list_isos(conn, after_seq=None, limit=10_000, org_id=who.org_id)
        owner = None if who.operator else who.org_id
        for iso in rows:
            if iso.source_url == source_url and iso.org_id == owner and iso.status in ("ready", "importing"):
                return iso.id
        check_url(source_url, field, ("http", "https"))
        base = re.sub(r"[^A-Za-z0-9._-]", "-", source_url.rstrip("/").rsplit("/", 1)[-1])[:40].strip(".-_") or "iso"
        name = f"{base}-{ids.new_id('x')[2:8]}"
        try:
            _, iso_id = await self.create(name=name, source_url=source_url, sha256=None, who=who)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message.replace("sourceUrl", field), field=field) from None
        return iso_id

    async def for_vm(self, conn: AsyncConnection, ref: str, who: Principal, field: str, *, importing: bool = False) -> Iso:
        """The ISO a VM's CD-ROM is asked to hold (`cdrom.isoId`), inside the caller's
        transaction: one the caller may see (404 otherwise, as for any other organization's
        resource) and ready (409), or still importing when `importing` (a new VM's create job
        waits for it)."""
        if not isinstance(ref, str) or not ref or len(ref) > 64:
            raise InvalidRequest(f"{field} must name an ISO (its id or name)", field=field)
        iso = await iso_q.find_iso(conn, ref, who.org_id)
        if iso is None:
            raise NotFound(f"iso {ref} does not exist", field=field)
        if iso.status != "ready" and not (importing and iso.status == "importing"):
            raise InvalidState(f"{field}: ISO {iso.name} is {iso.status}, not ready", current=iso.status, required="ready")
        return iso
