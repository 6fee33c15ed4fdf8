"""/api/v1/imports: bring a VM in from an OVA, a disk image, vSphere or another vmplane (a
job: 202 + jobId, importId); read an import's stage and bytes."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from ...services.imports import parse_request
from ..deps import CallerDep, RuntimeDep
from ..schemas import CloudInitIn, In, Page
from .deps import ERRORS, Limit, PageToken

router = APIRouter(tags=["imports"])


class _SentOnce(FileResponse):
    """A file deleted, and `done` called, once it has been sent, or the client went away."""

    def __init__(self, path: Path, *, done: Callable[[], None], **kw: Any) -> None:
        super().__init__(path, **kw)
        self._path, self._done = path, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._path.unlink(missing_ok=True)
            self._done()


class ImportSourceIn(In):
    type: Literal["ova", "disk", "vsphere", "vmplane"]
    path: str | None = Field(None, max_length=4096, description="ova, disk: a local file under VMPLANE_IMPORT_DIRS")
    url: str | None = Field(None, max_length=4096, description="ova, disk: http(s) or file URL; vmplane: its base URL")
    format: Literal["qcow2", "raw", "vmdk", "vhdx"] | None = Field(None, description="disk: the image's format (default: detected)")
    profile: str | None = Field(None, max_length=63, description="vsphere: a stored connection profile")
    vcenterUrl: str | None = Field(None, max_length=2048, description="vsphere: ad-hoc connection (not stored)")
    username: str | None = Field(None, max_length=256)
    password: str | None = Field(None, max_length=1024)
    insecure: bool | None = None
    vmPath: str | None = Field(None, max_length=4096, description="vsphere: the VM's inventory path")
    exportMethod: Literal["auto", "lease", "datastore"] = "auto"
    apiKey: str | None = Field(None, max_length=1024, description="vmplane: an API key of the other vmplane")
    vmId: str | None = Field(None, max_length=64, description="vmplane: the VM there")


class ImportIn(In):
    source: ImportSourceIn
    name: str | None = Field(None, max_length=63, description="the VM's name (default: the source's)")
    cpu: int | None = Field(None, ge=1, le=256)
    ramMb: int | None = Field(None, ge=64, le=4 << 20)
    diskGb: int | None = Field(None, ge=1, le=65536)
    networkMapping: dict[str, str] = Field(default_factory=dict, max_length=64, description="source network -> vmplane network")
    removeCdroms: bool = False
    start: bool = True
    nodeId: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=64)
    sshKeys: list[str] = Field(default_factory=list, max_length=32, description="OpenSSH public keys for the VM's seed, as on VM create")
    cloudInit: CloudInitIn | None = Field(None, description="the VM's cloud-init documents, as on VM create")
    loginUser: str | None = Field(
        None, max_length=64, description="the user the VM logs in as over SSH, a Unix user name (default: a vmplane source's VM's, else root)",
    )
    origin: dict[str, Any] | None = Field(
        None, description="what the caller sent in its own words (a face's job definition): kept and shown back, never interpreted; "
        "keys such as password and api_key are left out",
    )  # fmt: skip


class ImportOut(BaseModel):
    id: str
    jobId: str
    vmId: str | None
    name: str
    source: dict[str, Any]
    options: dict[str, Any]
    state: str
    stage: str | None
    progress: int
    bytesDone: int
    bytesTotal: int | None
    shape: dict[str, Any] | None
    error: str | None
    createdBy: str
    createdAt: str
    updatedAt: str
    finishedAt: str | None
    origin: dict[str, Any] | None = None


class ImportAccepted(BaseModel):
    jobId: str
    importId: str


@router.post("/imports", status_code=202, response_model=ImportAccepted, responses=ERRORS)
async def create_import(body: ImportIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    req = parse_request(body.model_dump(exclude_unset=True))
    job_id, imp_id = await rt.imports.submit(req, who)
    return JSONResponse({"jobId": job_id, "importId": imp_id}, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


@router.get("/imports", response_model=Page[ImportOut])
async def list_imports(rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    items, token = await rt.imports.list(who, limit=limit, page_token=pageToken)
    return JSONResponse({"items": [i.to_wire() for i in items], "nextPageToken": token})


@router.get("/imports/{import_id}", response_model=ImportOut, responses=ERRORS)
async def get_import(import_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse((await rt.imports.get(import_id, who)).to_wire())


@router.get(
    "/vms/{vm_id}/disk",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}, "description": "the disk as a qcow2 image"}, 429: {"description": "VMPLANE_EXPORT_CONCURRENCY exports of your organization already run"}},
)
async def export_disk(vm_id: str, rt: RuntimeDep, who: CallerDep) -> FileResponse:
    """The VM's disk as a standalone qcow2 image (point in time; live if it runs): what an
    import with source type `vmplane` fetches from here."""
    release = rt.imports.take_export_slot(who)  # 429 beyond VMPLANE_EXPORT_CONCURRENCY
    try:
        path = await rt.imports.export_disk(vm_id, who)
    except BaseException:
        release()
        raise
    return _SentOnce(
        path, media_type="application/octet-stream", filename=f"{vm_id}.qcow2", headers={"X-Vmplane-Disk-Format": "qcow2"},
        done=release,
    )  # fmt: skip
