"""SQL for the ISO library and the VMs whose CD-ROM holds an ISO; where an ISO's file is."""

from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import ids
from ..domain import Iso
from .tables import isos, vms

ISOS_DIR = "isos"
"""the ISO files' directory in the data dir"""
UPLOAD_SUFFIX = ".upload"
"""an uploaded ISO still arriving (services/isos.py); `.part`: one being downloaded (an iso-import job)"""
ISO9660_MAGIC = b"CD001"
ISO9660_OFFSET = 32769
"""the primary volume descriptor of an ISO 9660 image starts at sector 16 (2048-byte
sectors): its type byte, then the standard identifier `CD001`"""


def iso_path(isos_dir: Path, iso_id: str, suffix: str = ".iso") -> Path:
    """The file of ISO `iso_id` in `isos_dir`: the only way an ISO's id becomes a path, and
    only when it has the shape of an ISO id (no separators, no dots: ValueError otherwise)."""
    if not ids.looks_like_id(iso_id) or not iso_id.startswith("iso-"):
        raise ValueError(f"{iso_id!r} is not an ISO id")
    return isos_dir / f"{iso_id}{suffix}"


def is_iso9660(path: Path) -> bool:
    """Whether the file has the ISO 9660 signature (`CD001` at byte 32769)."""
    with path.open("rb") as f:
        f.seek(ISO9660_OFFSET)
        return f.read(len(ISO9660_MAGIC)) == ISO9660_MAGIC


def _one(row: Any) -> Iso | None:
    return Iso.from_row(row) if row is not None else None


async def insert_iso(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(isos), [row])


async def get_iso(conn: AsyncConnection, iso_id: str) -> Iso | None:
    """An ISO by id, whoever owns it (the caller checks who may see it)."""
    return _one((await conn.execute(select(isos).where(isos.c.id == iso_id))).first())


async def find_iso(conn: AsyncConnection, ref: str, org_id: str | None) -> Iso | None:
    """The ISO `ref` (id or name) as organization `org_id` sees it: its own and the shared
    ones; a name is its own first, then a shared one. org_id None: the shared ones only."""
    visible = or_(isos.c.org_id.is_(None), isos.c.org_id == org_id) if org_id is not None else isos.c.org_id.is_(None)
    q = select(isos).where(visible, or_(isos.c.id == ref, isos.c.name == ref)).order_by(isos.c.id != ref, isos.c.org_id.is_(None))
    return _one((await conn.execute(q.limit(1))).first())


async def name_taken(conn: AsyncConnection, name: str, org_id: str | None) -> bool:
    where = isos.c.org_id.is_(None) if org_id is None else isos.c.org_id == org_id
    return (await conn.execute(select(isos.c.id).where(where, isos.c.name == name))).first() is not None


async def list_isos(conn: AsyncConnection, *, after_seq: int | None, limit: int, org_id: str | None) -> list[Iso]:
    """The shared ISOs and `org_id`'s own (org_id None: every ISO, for operators)."""
    q = select(isos)
    if org_id is not None:
        q = q.where(or_(isos.c.org_id.is_(None), isos.c.org_id == org_id))
    if after_seq is not None:
        q = q.where(isos.c.seq > after_seq)
    return [Iso.from_row(r) for r in (await conn.execute(q.order_by(isos.c.seq).limit(limit))).all()]


async def set_iso(conn: AsyncConnection, iso_id: str, **values: Any) -> None:
    await conn.execute(update(isos).where(isos.c.id == iso_id).values(**values))


async def delete_iso(conn: AsyncConnection, iso_id: str) -> None:
    await conn.execute(delete(isos).where(isos.c.id == iso_id))


async def org_bytes(conn: AsyncConnection, org_id: str) -> int:
    """Bytes of the organization's own ISOs (ready or arriving): what they take of its diskGb quota."""
    q = select(func.coalesce(func.sum(isos.c.size_bytes), 0)).where(isos.c.org_id == org_id)
    return int((await conn.execute(q)).scalar_one())


async def holders(conn: AsyncConnection, iso_id: str) -> list[tuple[str, str]]:
    """(id, name) of the VMs whose CD-ROM holds the ISO."""
    q = select(vms.c.id, vms.c.name).where(vms.c.cdrom_iso_id == iso_id).order_by(vms.c.seq)
    return [(r.id, r.name) for r in (await conn.execute(q)).all()]
