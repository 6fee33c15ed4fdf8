"""Files a caller sends as a request body (template images, ISOs), streamed to disk as they
arrive under one set of limits: the download cap and the room the organization's diskGb
quota leaves, counting its other uploads still arriving."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from ..auth import Principal
from ..errors import InvalidRequest, PayloadTooLarge
from ..store import tenancy as t_q
from .tenancy import QuotaExceeded

GIB = 1 << 30


class Uploads:
    """The uploads of this process. One instance is shared by every service that takes files,
    so that an organization's uploads of any kind count together against its quota."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        """`VMPLANE_MAX_DOWNLOAD_BYTES`: no upload is larger than a download may be"""
        self._arriving: dict[str, int] = {}
        """bytes of uploads still arriving, per organization (they count against its quota)"""

    def check_length(self, length: int | None, what: str) -> None:
        """413 before the first byte when Content-Length says the body is too large."""
        if length is not None and length > self.cap:
            raise PayloadTooLarge(f"{what} is larger than {self.cap} bytes (VMPLANE_MAX_DOWNLOAD_BYTES)", limit=self.cap)

    @staticmethod
    async def room(conn: AsyncConnection, who: Principal) -> int | None:
        """Bytes the caller's organization's diskGb quota leaves free (None: no bound, or an
        operator's upload, which is shared and no organization's)."""
        if who.operator:
            return None
        org = await t_q.get_org(conn, who.org_id)
        limit = org.quotas.get("diskGb") if org is not None and org.quotas else None
        if limit is None:
            return None
        used = int((await t_q.org_usage(conn, who.org_id)).disk_gb) * GIB
        return int(limit) * GIB - used

    @contextlib.asynccontextmanager
    async def receive(
        self, chunks: AsyncIterator[bytes], part: Path, *, org: str, room: int | None, length: int | None, what: str
    ) -> AsyncIterator[tuple[int, str]]:
        """Write `chunks` to the new file `part` as they arrive, never whole into memory;
        gives (bytes, sha256 hex) to the block that records the file, and its bytes count as
        arriving until that block ends (then they are the caller's to count). Stops with 413 past the cap and 409 `quota_exceeded`
        past `room` (with the organization's other uploads arriving), checked before the
        first byte when `length` (Content-Length) is known and as bytes arrive; 400 (`body`)
        for an empty body or one that is not `length` long. On any failure (the client went
        away: `chunks` raised, or the block raised) `part` is removed."""
        done = 0

        def refuse_past(total: int) -> None:
            if total > self.cap:
                raise PayloadTooLarge(f"{what} is larger than {self.cap} bytes (VMPLANE_MAX_DOWNLOAD_BYTES)", limit=self.cap)
            if room is not None and total + self._arriving.get(org, 0) - done > room:
                raise QuotaExceeded(
                    f"quota exceeded: {what} is larger than the {max(0, room) // GIB} GiB the diskGb quota leaves free",
                    quota="diskGb", requested=total,
                )  # fmt: skip

        if length is not None:
            refuse_past(length)
        sha = hashlib.sha256()
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with part.open("xb") as out:
                async for chunk in chunks:
                    refuse_past(done + len(chunk))
                    out.write(chunk)
                    sha.update(chunk)
                    done += len(chunk)
                    self._arriving[org] = self._arriving.get(org, 0) + len(chunk)
            if done == 0:
                raise InvalidRequest(f"the request body is empty: send {what}", field="body")
            if length is not None and done != length:
                raise InvalidRequest(f"the body has {done} bytes, Content-Length said {length}", field="body")
            yield done, sha.hexdigest()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
        finally:
            left = self._arriving.get(org, 0) - done
            if left > 0:
                self._arriving[org] = left
            else:
                self._arriving.pop(org, None)
