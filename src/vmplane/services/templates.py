"""Templates: register images to create VMs from; import, rename and delete are jobs."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import Principal
from ..domain import Template
from ..domain.login import check_login_user, default_login_user
from ..errors import Conflict, Forbidden, InvalidRequest, InvalidState, NotFound, Reason
from ..store import nodes as node_q
from ..store import templates as tpl_q
from . import pages
from .imports import check_url

if TYPE_CHECKING:
    from ..config import Settings
    from ..jobs.engine import JobEngine
    from ..outbound import Outbound
    from ..store import Store
    from .imports import ImportService
    from .tenancy import TenancyService
    from .uploads import Uploads


TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
OS_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
GIB = 1 << 30


def check_template_name(name: str) -> None:
    if not TEMPLATE_NAME_RE.match(name):
        raise InvalidRequest(f"name {name!r} is not valid: 1-63 letters, digits, '.', '_' or '-'", field="name")


def check_os(os_: str) -> None:
    if not OS_RE.match(os_):
        raise InvalidRequest(f"os {os_!r} is not valid: 1-32 lower-case letters, digits, '.', '_' or '-'", field="os")


class TemplateService:
    def __init__(
        self, *, store: Store, settings: Settings, engine: JobEngine, imports: ImportService, outbound: Outbound, tenancy: TenancyService,
        images_dir: Path, home: Callable[[], str], uploads: Uploads,
    ) -> None:  # fmt: skip
        self.images_dir = images_dir
        self.uploads = uploads
        self.home = home
        """this process's data dir identity: an upload's job runs where its file is"""
        self.store = store
        self.settings = settings
        self.engine = engine
        self.imports = imports
        self.outbound = outbound
        self.tenancy = tenancy

    async def get(self, ref: str, who: Principal) -> Template:
        """A template the caller may use, by id or name: its organization's and the shared
        ones (no organization); a name is its organization's first, then a shared one."""
        async with self.store.read() as conn:
            row = await tpl_q.find_template(conn, ref, who.org_id)
        if row is None:
            raise NotFound(f"template {ref} does not exist")
        return row

    async def default_id(self, who: Principal) -> str | None:
        """The template of VMs whose request names no image: `default_template` when the
        caller may use it and it is ready; None otherwise."""
        try:
            tpl = await self.get(self.settings.default_template, who)
        except NotFound:
            return None
        return tpl.id if tpl.status == "ready" else None

    def _check_owner(self, tpl: Template, who: Principal) -> None:
        if tpl.org_id is None and not who.operator:
            raise Forbidden(f"template {tpl.name} is shared by the operators; only they change it")

    async def list(self, who: Principal, *, limit: int, page_token: str | None) -> tuple[Sequence[Template], str | None]:
        after = pages.decode("templates", page_token)
        async with self.store.read() as conn:
            rows = await tpl_q.list_templates(conn, after_seq=after, limit=limit + 1, org_id=who.org_id)
        token = pages.encode("templates", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token

    async def create(
        self, *, name: str, os_: str, node_id: str | None, source_url: str, who: Principal,
        checksum: str | None = None, initramfs_of: str | None = None, field: str = "sourceUrl", login_user: str | None = None,
    ) -> tuple[str, str]:
        """Operators' templates are shared with every organization (the shared namespace,
        which only operators create names in); others' stay private. A name is unique within
        its namespace only.

        `checksum`: the sha256 (hex) the download must have, else the import fails.
        `initramfs_of`: the source is an initramfs, booted with this template's kernel,
        command line and disk (a template of a plugin's `initramfs`).
        An http(s) source must pass the outbound policy (outbound.py), now and when fetched.
        A file:// source is any local file for operators; for everyone else only a file in
        the directories imports may read (VMPLANE_IMPORT_DIRS). `field` names the URL in
        errors. `login_user`: the user its VMs log in as (default: the one `os_` implies,
        domain/login.py)."""  # fmt: skip
        check_template_name(name)
        check_os(os_)
        login_user = default_login_user(os_) if login_user is None else check_login_user(login_user)
        check_url(source_url, field)
        if urlparse(source_url).scheme == "file" and not who.operator:  # not the server's own files
            self.imports.local_file(unquote(urlparse(source_url).path), field)
        await self.outbound.check(source_url, field)
        payload = {k: v for k, v in {"checksum": checksum, "initramfsOf": initramfs_of}.items() if v}
        tpl_id = ids.new_id("tpl")
        job_id = await self._register(tpl_id, name=name, os_=os_, login_user=login_user, node_id=node_id, source_url=source_url,
                                      checksum=f"sha256:{checksum.lower()}" if checksum else None, payload=payload, who=who)  # fmt: skip
        return job_id, tpl_id

    async def _register(
        self, tpl_id: str, *, name: str, os_: str, login_user: str, node_id: str | None, source_url: str | None, checksum: str | None,
        payload: dict[str, Any], who: Principal,
    ) -> str:  # fmt: skip
        """The template's row (`importing`) and its template-create job, in one transaction
        that checks the name and the organization's quota of templates."""
        now = clock.now()
        owner = None if who.operator else who.org_id
        try:
            async with self.store.write() as conn:
                await self._check_new(conn, name, node_id, who)
                await tpl_q.insert_template(
                    conn,
                    {
                        "id": tpl_id,
                        "name": name,
                        "org_id": owner,
                        "os": os_,
                        "login_user": login_user,
                        "node_id": node_id,
                        "source_url": source_url,
                        "status": "importing",
                        # what the image must hash to (the import fails otherwise); then what it does
                        "checksum": checksum,
                        "size_mb": 0,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                job_id = await self.engine.submit(conn, "template-create", who, [(tpl_id, payload)])
        except IntegrityError:  # the (namespace, name) key: a create of the same name at the same time
            raise Conflict(f"a template named {name!r} was created at the same time", field="name") from None
        self.engine.wakeup()
        return job_id

    async def _check_new(self, conn: AsyncConnection, name: str, node_id: str | None, who: Principal) -> None:
        """The name is free in the caller's namespace, the node exists, and the organization
        may hold one template more (operators' templates are shared, and no organization's)."""
        if await tpl_q.name_taken(conn, name, None if who.operator else who.org_id):
            raise Conflict(f"a template named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
        if node_id is not None and await node_q.get_node(conn, node_id) is None:
            raise InvalidRequest(f"nodeId {node_id!r} does not exist", field="nodeId")
        if not who.operator:
            await self.tenancy.reserve(conn, who.org_id, templates=1)

    async def upload(
        self, chunks: AsyncIterator[bytes], *, name: str, os_: str, node_id: str | None, who: Principal, login_user: str | None = None,
        length: int | None = None,
    ) -> tuple[str, str]:
        """A template from an image file the caller sends as the request body (`chunks`, as it
        arrives): returns (job id, template id) as `create` does, and the same template-create
        job takes the file through the same intake (drivers/qemu/intake.py) as a downloaded one.

        The body goes to disk as it arrives, never whole into memory. It stops with 413 past
        `VMPLANE_MAX_DOWNLOAD_BYTES` (the cap of a downloaded image), and with 409
        `quota_exceeded` past what the organization's `diskGb` quota leaves free (the disks
        of its VMs, and its other uploads still arriving); both are checked before the first
        byte when `length` (Content-Length) is known, and as bytes arrive. Name, OS, node and
        the quota of templates are checked before the body is read. If the body stops half way
        (the client goes away: `chunks` raises) or is refused, nothing stays behind: no file,
        no template."""  # fmt: skip
        check_template_name(name)
        check_os(os_)
        login_user = default_login_user(os_) if login_user is None else check_login_user(login_user)
        self.uploads.check_length(length, "the image")
        async with self.store.write() as conn:
            await self._check_new(conn, name, node_id, who)
            room = await self.uploads.room(conn, who)
        tpl_id = ids.new_id("tpl")
        part = self.images_dir / f"{tpl_id}{tpl_q.UPLOAD_SUFFIX}"
        async with self.uploads.receive(chunks, part, org=who.org_id, room=room, length=length, what="the image") as (_size, sha256):
            payload = {"upload": True, "sha256": sha256, "home": self.home()}
            job_id = await self._register(tpl_id, name=name, os_=os_, login_user=login_user, node_id=node_id, source_url=None,
                                          checksum=None, payload=payload, who=who)  # fmt: skip
        return job_id, tpl_id

    async def sweep_uploads(self) -> tuple[str, ...]:
        """Remove the uploads a stopped server left half-written (`<template id>.upload` with no
        template row: the row is made only once the whole body is on disk). One whose template
        waits to be imported stays for its job, and so does one written to in the last two
        body timeouts (a replica sharing this data dir may be receiving it: an upload that
        sends nothing for one body timeout is refused and removed). Returns the names removed
        (run at start)."""
        removed: tuple[str, ...] = ()
        quiet_since = time.time() - 2 * self.settings.body_timeout_seconds
        async with self.store.read() as conn:
            for path in sorted(self.images_dir.glob(f"*{tpl_q.UPLOAD_SUFFIX}")):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime > quiet_since:
                        continue
                tpl = await tpl_q.get_template(conn, path.name.removesuffix(tpl_q.UPLOAD_SUFFIX))
                if tpl is None or tpl.status != "importing":
                    path.unlink(missing_ok=True)
                    removed += (path.name,)
        return removed

    async def update(self, ref: str, *, name: str | None, os_: str | None, who: Principal, login_user: str | None = None) -> str:
        """Rename a template, change its OS label or its login user (a job). A new `os` leaves
        the login user as it is: VMs made from it log in as the user the image has."""
        tpl = await self.get(ref, who)
        self._check_owner(tpl, who)
        if name is not None:
            check_template_name(name)
        if os_ is not None:
            check_os(os_)
        if login_user is not None:
            check_login_user(login_user)
        if name is None and os_ is None and login_user is None:
            raise InvalidRequest("give name, os or loginUser to change", field="body")
        async with self.store.write() as conn:
            if name is not None and name != tpl.name and await tpl_q.name_taken(conn, name, tpl.org_id):
                raise Conflict(f"a template named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
            job_id = await self.engine.submit(conn, "template-update", who, [(tpl.id, {"name": name, "os": os_, "login_user": login_user})])
        self.engine.wakeup()
        return job_id

    async def delete(self, refs: Sequence[str], who: Principal) -> str:
        """One template-delete job, a task per template (by id or name). As the cluster
        contract models a bulk delete, a template the caller cannot see (missing, another
        organization's), may not change (shared, for anyone but an operator) or that is
        still importing gets a task failed at submission with that error, under the ref as
        given when unknown, and the others are deleted: the job ends `partial` (`failed` if none could
        be). The list itself (empty, too long, a template twice) is a 400."""
        if not refs:
            raise InvalidRequest("templateIds must name at least one template", field="templateIds")
        limit = self.settings.max_bulk
        if len(refs) > limit:
            raise InvalidRequest(f"templateIds: at most {limit} templates per request, this one names {len(refs)}", field="templateIds", limit=limit)
        if len(set(refs)) != len(refs):
            raise InvalidRequest("templateIds names a template twice", field="templateIds")
        async with self.store.write() as conn:
            items: list[tuple[str, dict[str, Any]]] = []
            refused: dict[str, str] = {}
            for ref in refs:
                tpl = await tpl_q.find_template(conn, ref, who.org_id)
                try:
                    if tpl is None:
                        raise NotFound(f"template {ref} does not exist")
                    self._check_owner(tpl, who)
                    if tpl.status == "importing":
                        raise InvalidState(f"template {ref} is still importing; cancel its job instead", current="importing")
                except (NotFound, Forbidden, InvalidState) as exc:
                    refused[tpl.id if tpl is not None else ref] = exc.message
                items.append((tpl.id if tpl is not None else ref, {}))
            if len({r for r, _ in items}) != len(items):
                raise InvalidRequest("templateIds names a template twice", field="templateIds")
            job_id = await self.engine.submit(conn, "template-delete", who, items, refused=refused)
        self.engine.wakeup()
        return job_id
