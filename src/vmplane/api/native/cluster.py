"""/api/v1/nodes and /api/v1/cluster."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ... import clock
from .. import render
from ..deps import CallerDep, RuntimeDep
from ..schemas import ClusterOut, NodeOut, NodeResourcesOut, Page
from .deps import ERRORS, Limit, PageToken

router = APIRouter(tags=["cluster"])


@router.get("/nodes", response_model=Page[NodeOut], responses=ERRORS)
async def list_nodes(rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    """Every node; `agentUrl` only for operators (null for others)."""
    rows, token = await rt.cluster.nodes(limit=limit, page_token=pageToken)
    return JSONResponse({"items": [render.node(r, who.operator) for r in rows], "nextPageToken": token})


@router.get("/nodes/{node_id}", response_model=NodeOut, responses=ERRORS)
async def get_node(node_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`agentUrl` only for operators (null for others)."""
    return JSONResponse(render.node(await rt.cluster.node(node_id), who.operator))


@router.get("/nodes/{node_id}/resources", response_model=NodeResourcesOut, responses=ERRORS)
async def node_resources(node_id: str, rt: RuntimeDep) -> JSONResponse:
    return JSONResponse(render.node_resources(await rt.cluster.node(node_id)))


@router.get("/nodes/{node_id}/devices", responses=ERRORS)
async def node_devices(node_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Host PCI devices offered for passthrough (the operator's allowlist admits them):
    `assigned` says whether one is given to a VM, `vmId` which, when the caller can see that
    VM (operators see all; others only their organization's, a team key its team's)."""
    return JSONResponse({"items": await rt.cluster.devices(node_id, who)})


@router.get("/cluster", response_model=ClusterOut)
async def cluster(rt: RuntimeDep) -> JSONResponse:
    d = await rt.cluster.details()
    d["createdAt"] = clock.rfc3339(d["createdAt"])
    return JSONResponse(d)


@router.get("/cluster/resources", response_model=NodeResourcesOut)
async def cluster_resources(rt: RuntimeDep) -> JSONResponse:
    return JSONResponse(render.node_resources(await rt.cluster.totals()))
