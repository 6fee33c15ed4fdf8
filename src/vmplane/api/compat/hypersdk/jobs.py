"""HyperSDK jobs as vmplane imports: a definition becomes a native import request
(rt.imports), an import is rendered back as a HyperSDK job.

A definition names its source the document's way (`vm_path` and a vCenter connection: a
vSphere import) or, as a superset, with `source.type` `ova`, `disk` or `vmplane`. Credentials
given inline are used for the job and never shown again; a schedule's template keeps them in a
stored, encrypted vSphere profile instead (its name is derived from URL and user).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ....auth import Principal
from ....domain.names import derive_name
from ....domain.requests import ImportRequest
from ....errors import InvalidRequest, InvalidState, NotFound
from ....events.formats import IMPORT_JOB_TYPE
from ....services.imports import parse_request
from ....store import jobs as job_q
from . import wire
from .wire import JobDefIn

if TYPE_CHECKING:
    from ....runtime import Runtime



def job_type() -> str:
    return IMPORT_JOB_TYPE


def vm_name(d: JobDefIn, fallback: str) -> str:
    """A VM name from the definition's name or the last part of its path."""
    base = d.name or (d.vm_path or "").rstrip("/").rsplit("/", 1)[-1] or fallback
    return derive_name(base.lower(), fallback)


def _source(d: JobDefIn, where: str) -> dict[str, Any]:
    """The native import's `source` for a definition."""
    s = d.source
    kind = s.type if s is not None else "vsphere"
    if kind == "vsphere":
        v = d.vcenter
        url = (s and (s.vcenter_url or s.server or s.url)) or d.vcenter_url or (v and (v.server or v.vcenter_url or v.url))
        profile = (s and s.profile) or d.profile
        if not d.vm_path:
            raise InvalidRequest(f"{where}.vm_path: the VM's inventory path is required", field=f"{where}.vm_path")
        if not url and not profile:
            raise InvalidRequest(f"{where}: give the vCenter (source.vcenter_url, vcenter.server or vcenter_url) or a profile", field=f"{where}.source")
        out: dict[str, Any] = {"type": "vsphere", "vmPath": d.vm_path}
        if profile:
            out["profile"] = profile
        else:
            out["vcenterUrl"] = url
            out["username"] = (s and s.username) or d.username or (v and v.username) or None
            out["password"] = (s and s.password) or d.password or (v and v.password) or ""
            insecure = next((x for x in ((s and s.insecure), d.insecure, (v and v.insecure)) if x is not None), None)
            if insecure is not None:
                out["insecure"] = bool(insecure)
        method = (d.export_method or "").lower()
        if method == "web":  # HyperSDK's HTTP download of the datastore files
            out["exportMethod"] = "datastore"
        return {k: v for k, v in out.items() if v is not None}
    assert s is not None
    if kind in ("ova", "disk"):
        loc = s.url or s.path or d.vm_path
        if not loc:
            raise InvalidRequest(f"{where}.source: give the {kind} file's url or path", field=f"{where}.source.url")
        out = {"type": kind, ("url" if "://" in loc else "path"): loc}
        if kind == "disk" and s.format:
            out["format"] = s.format
        return out
    out = {"type": "vmplane", "url": s.url, "apiKey": s.api_key, "vmId": s.vm_id}
    return {k: v for k, v in out.items() if v is not None}


def native_request(d: JobDefIn, where: str) -> dict[str, Any]:
    """The body of `POST /api/v1/imports` a definition stands for."""
    o = d.options
    mapping = d.network_mapping or (o and o.network_mapping) or None
    remove_cdrom = next((x for x in (d.remove_cdrom, o and o.remove_cdrom) if x is not None), False)
    start = next((x for x in (d.start, o and o.start, o and o.power_on, o and o.libvirt_autostart) if x is not None), True)
    body: dict[str, Any] = {
        "name": vm_name(d, "imported-vm"), "source": _source(d, where), "removeCdroms": bool(remove_cdrom), "start": bool(start),
        "origin": wire.definition_echo(d),
    }  # fmt: skip
    if mapping:
        body["networkMapping"] = mapping
    return body


def _in(where: str, exc: InvalidRequest) -> InvalidRequest:
    """The core's error, its field named from the face's side (`jobs[1].source.vmPath`)."""
    field = f"{where}.{exc.field}" if exc.field and where != "body" else (exc.field or where)
    return InvalidRequest(exc.message, field=field)


async def known_networks(rt: Runtime, who: Principal, body: dict[str, Any]) -> list[str]:
    """Leave out of the body's networkMapping the targets that are no vmplane network (HyperSDK
    maps to libvirt bridges such as `br0`): those NICs go to the default network. Returns a
    warning per entry left out."""
    warnings = []
    for source_net, target in sorted((body.get("networkMapping") or {}).items()):
        try:
            await rt.networks.get(target, who)
        except NotFound:
            del body["networkMapping"][source_net]
            warnings.append(f"network_mapping: {target!r} is no vmplane network; {source_net!r} goes to the default network")
    if "networkMapping" in body and not body["networkMapping"]:
        del body["networkMapping"]
    return warnings


def _checked(body: dict[str, Any], where: str) -> ImportRequest:
    """The native request of a definition; InvalidRequest in the face's words."""
    try:
        return parse_request(body)
    except InvalidRequest as exc:
        if exc.field == "origin":  # the definition itself, kept to be shown back
            raise InvalidRequest(f"{where}: the job definition cannot be kept as sent ({exc.message})", field=where) from None
        raise _in(where, exc) from None


async def submit(rt: Runtime, who: Principal, d: JobDefIn, where: str) -> tuple[str, list[str]]:
    """Submit one definition; the HyperSDK job id (the import's id) and any warnings. The
    definition as sent (credentials left out) is kept with the import as its `origin`."""
    body = native_request(d, where)
    warnings = await known_networks(rt, who, body)
    req = _checked(body, where)
    try:
        _job_id, imp_id = await rt.imports.submit(req, who)
    except InvalidRequest as exc:
        raise _in(where, exc) from None
    return imp_id, warnings


async def template(rt: Runtime, who: Principal, d: JobDefIn, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A schedule's native job template for a definition, and the definition to show. Inline
    vCenter credentials go into a stored, encrypted profile the template names."""
    body = native_request(d, where)
    await known_networks(rt, who, body)
    src = body["source"]
    _checked(body, where)
    if src["type"] == "vsphere" and "vcenterUrl" in src:
        digest = hashlib.sha256(f"{src['vcenterUrl']}\0{src.get('username')}".encode()).hexdigest()[:12]
        name = f"hypersdk-{digest}"
        try:
            await rt.vsphere.delete_profile(who, name)  # the password may have changed
        except NotFound:
            pass
        await rt.vsphere.create_profile(
            who, name=name, url=src["vcenterUrl"], username=src.get("username") or "", password=src.get("password") or "",
            insecure=bool(src.get("insecure")),
        )  # fmt: skip
        body["source"] = {k: v for k, v in src.items() if k not in ("vcenterUrl", "username", "password", "insecure")} | {"profile": name}
    elif src["type"] == "vmplane" and src.get("apiKey"):
        raise InvalidRequest(f"{where}.source.api_key: a schedule cannot keep another vmplane's API key", field=f"{where}.source.api_key")
    return {"method": "POST", "path": "/api/v1/imports", "body": body}, wire.definition_echo(d)


async def _job(rt: Runtime, imp: Any) -> Any:
    async with rt.store.read() as conn:
        return await job_q.get_job(conn, imp.job_id)


async def get(rt: Runtime, who: Principal, job_id: str) -> dict[str, Any]:
    try:
        imp = await rt.imports.get(job_id, who)
    except NotFound:
        raise NotFound(f"job {job_id} not found") from None
    return wire.render_job(imp, await _job(rt, imp))


async def by_native_job(rt: Runtime, who: Principal, native_job_id: str | None) -> dict[str, Any] | None:
    if not native_job_id:
        return None
    imp = await rt.imports.for_job(native_job_id, who)
    return wire.render_job(imp, await _job(rt, imp)) if imp is not None else None


async def hypersdk_id(rt: Runtime, who: Principal, native_job_id: str | None) -> str | None:
    """The HyperSDK id (the import's) of a vmplane job; the job's own id when it is no import."""
    if not native_job_id:
        return None
    imp = await rt.imports.for_job(native_job_id, who)
    return imp.id if imp is not None else native_job_id


async def query(rt: Runtime, who: Principal, *, job_ids: list[str] | None, statuses: set[str] | None, limit: int | None) -> list[dict[str, Any]]:
    """The caller's jobs, newest first, filtered by id and HyperSDK status."""
    out: list[dict[str, Any]] = []
    if job_ids is not None:
        for job_id in job_ids:
            try:
                out.append(await get(rt, who, job_id))
            except NotFound:
                continue
    elif statuses is not None:  # the jobs of those states only, newest first
        states = [st for st, status in wire.HYPERSDK_STATUS.items() if status in statuses]
        found: list[tuple[Any, dict[str, Any]]] = []
        for state in states:
            token, of_state = None, 0
            while True:
                rows, token = await rt.jobs.list(who, state=state, type_=IMPORT_JOB_TYPE, limit=500, page_token=token)
                for job in rows:
                    imp = await rt.imports.for_job(job.id, who)
                    if imp is not None:
                        found.append((job.seq, wire.render_job(imp, job)))
                        of_state += 1
                if token is None or (limit and of_state >= limit):  # the newest `limit` of each state suffice
                    break
        out = [j for _, j in sorted(found, key=lambda f: -f[0])]
    else:
        token = None
        async with rt.store.read() as conn:
            while True:
                views, token = await rt.imports.list(who, limit=500, page_token=token)
                jobs = {v.job_id: await job_q.get_job(conn, v.job_id) for v in views}
                out += [wire.render_job(v, jobs[v.job_id]) for v in views]
                if token is None or (limit and statuses is None and len(out) >= limit):
                    break
    if statuses is not None:
        out = [j for j in out if j["status"] in statuses]
    return out[:limit] if limit else out


async def counts(rt: Runtime, who: Principal) -> dict[str, int]:
    """The caller's import jobs by HyperSDK status (one counting query)."""
    c = {s: 0 for s in wire.STATUSES}
    for state, n in (await rt.jobs.counts(who, IMPORT_JOB_TYPE)).items():
        c[wire.HYPERSDK_STATUS.get(state, "failed")] += n
    return c


async def cancel(rt: Runtime, who: Principal, job_id: str) -> None:
    """Cancel the import's job (Conflict-like InvalidState if it has ended)."""
    try:
        imp = await rt.imports.get(job_id, who)
    except NotFound:
        raise NotFound(f"job {job_id} not found") from None
    try:
        await rt.jobs.cancel(imp.job_id, who)
    except InvalidState as exc:  # said with the client's id and status words, not the native job's
        status = wire.HYPERSDK_STATUS.get(str(exc.details.get("current")), "failed")
        raise InvalidState(f"job {job_id} already ended ({status})", current=status) from None


async def logs(rt: Runtime, who: Principal, job_id: str) -> str:
    try:
        imp = await rt.imports.get(job_id, who)
    except NotFound:
        raise NotFound(f"job {job_id} not found") from None
    _, tasks = await rt.jobs.get(imp.job_id, who)
    lines = []
    for t in tasks:
        _task, log = await rt.jobs.get_task(imp.job_id, t.id, who)
        lines += [f"{wire.ts(entry.ts)} {entry.message}" for entry in log]
    return "\n".join(lines) + ("\n" if lines else "")
