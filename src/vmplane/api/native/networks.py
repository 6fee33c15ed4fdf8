"""/api/v1/networks, /api/v1/vms/{id}/ips and /api/v1/vms/{id}/firewall."""

from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...services.networks import render_network
from ..deps import CallerDep, RuntimeDep
from ..schemas import In, Page
from .deps import ERRORS

router = APIRouter(tags=["networks"])


class NetworkIn(In):
    name: str = Field(..., min_length=1, max_length=63)
    type: str = Field("bridge", description="bridge (a Linux bridge + tap per NIC, DHCP by dnsmasq) or user (QEMU user-mode)")
    subnet: str | None = Field(
        None, min_length=9, max_length=18,
        description="IPv4 CIDR, /8 to /29, e.g. 10.128.7.0/24. Tenants: inside the installation's tenant pool "
        "(VMPLANE_TENANT_SUBNET_POOL, default 10.128.0.0/9), or left out for a free /24 of it; operators: any private range",
    )  # fmt: skip
    ipv6Prefix: str | None = Field(None, max_length=64, description="an IPv6 /64 (bridge networks)")


class NetworkOut(BaseModel):
    id: str
    name: str
    type: str
    subnet: str
    gateway: str
    ipv6Prefix: str | None
    bridge: str | None
    shared: bool
    addressesTotal: int
    addressesInUse: int
    createdAt: str


class IpIn(In):
    networkId: str | None = Field(None, max_length=64, description="network of the NIC to add the address to (default: the first NIC's)")


class IpOut(BaseModel):
    ip: str
    networkId: str
    network: str | None
    nic: int
    mac: str | None
    primary: bool
    createdAt: str


class FirewallOptionsIn(In):
    enabled: bool | None = None
    enable: bool | None = Field(None, description="same as enabled (Blue Lobster's name)")
    policyIn: str | None = Field(None, max_length=16, description="ACCEPT or DROP")
    policyOut: str | None = Field(None, max_length=16, description="ACCEPT or DROP")
    rules: list[dict[str, Any]] | None = Field(None, max_length=256, description="when given, replaces every rule")


class RuleOut(BaseModel):
    pos: int
    type: str
    action: str
    proto: str | None = None
    dport: str | None = None
    sport: str | None = None
    source: str | None = None
    dest: str | None = None
    comment: str | None = None
    enable: int


class FirewallOut(BaseModel):
    enabled: bool
    policyIn: str
    policyOut: str
    rules: list[RuleOut]
    jobId: str | None = Field(None, description="the job that applies the change on the VM's node")


class RuleChangeOut(BaseModel):
    rule: RuleOut | None = None
    firewall: FirewallOut
    jobId: str


RULE_BODY = Body(
    ...,
    openapi_examples={"ssh": {"value": {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH"}}},
    description="type (in|out), action (ACCEPT|DROP|REJECT), proto, dport/sport ('22', '8000:9000', '80,443'), "
    "source/dest (address or CIDR), comment, enable (1|0), pos (insert here; default: append)",
)


@router.get("/networks", response_model=Page[NetworkOut], responses=ERRORS)
async def list_networks(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [render_network(r, n) for r, n in await rt.networks.list(who)], "nextPageToken": None})


@router.post("/networks", status_code=201, response_model=NetworkOut, responses=ERRORS)
async def create_network(body: NetworkIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Bridges and DHCP servers are set up on a node when its first VM on the network starts."""
    row = await rt.networks.create(who, body.name, body.type, body.subnet, body.ipv6Prefix)
    return JSONResponse(render_network(row, 0), status_code=201, headers={"Location": f"/api/v1/networks/{row.id}"})


@router.get("/networks/{network_id}", response_model=NetworkOut, responses=ERRORS)
async def get_network(network_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.networks.get(network_id, who)
    return JSONResponse(render_network(row, await rt.networks.in_use(row.id)))


@router.delete("/networks/{network_id}", status_code=204, responses=ERRORS)
async def delete_network(network_id: str, rt: RuntimeDep, who: CallerDep) -> None:
    """Refused (409) while VMs hold addresses on it."""
    await rt.networks.delete(network_id, who)


@router.get("/vms/{vm_id}/ips", response_model=list[IpOut], responses=ERRORS)
async def list_ips(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await rt.networks.addresses(vm_id, who))


@router.post("/vms/{vm_id}/ips", status_code=201, responses=ERRORS)
async def add_ip(vm_id: str, rt: RuntimeDep, who: CallerDep, body: IpIn | None = None) -> JSONResponse:
    """An additional address on one of the VM's NICs, configured in the guest by its agent."""
    change = await rt.networks.add_ip(vm_id, body.networkId if body else None, who)
    return JSONResponse({"ip": change.address, "jobId": change.job_id}, status_code=201)


@router.delete("/vms/{vm_id}/ips/{ip}", responses=ERRORS)
async def release_ip(vm_id: str, ip: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The primary (and so the last) address cannot be released: 409."""
    change = await rt.networks.release_ip(vm_id, ip, who)
    return JSONResponse({"ip": change.address, "jobId": change.job_id})


@router.get("/vms/{vm_id}/firewall", response_model=FirewallOut, responses=ERRORS)
async def get_firewall(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse((await rt.networks.firewall(vm_id, who)).to_wire())


@router.put("/vms/{vm_id}/firewall", response_model=FirewallOut, responses=ERRORS)
async def put_firewall(vm_id: str, body: FirewallOptionsIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Set the options (fields left out keep their value); `rules`, when given, replaces them.
    Applied on the node without a guest reboot by the job named in `jobId`."""
    enabled = body.enabled if body.enabled is not None else body.enable
    if body.rules is not None:
        current = await rt.networks.firewall(vm_id, who)
        whole = {
            "enabled": current.enabled if enabled is None else enabled,
            "policyIn": body.policyIn or current.policy_in,
            "policyOut": body.policyOut or current.policy_out,
            "rules": body.rules,
        }
        fw, job_id = await rt.networks.replace_firewall(vm_id, who, whole)
    else:
        fw, job_id = await rt.networks.set_options(vm_id, who, enabled, body.policyIn, body.policyOut)
    return JSONResponse({**fw.to_wire(), "jobId": job_id})


@router.post("/vms/{vm_id}/firewall/rules", status_code=201, response_model=RuleChangeOut, responses=ERRORS)
async def add_rule(vm_id: str, rt: RuntimeDep, who: CallerDep, body: dict[str, Any] = RULE_BODY) -> JSONResponse:
    fw, pos, job_id = await rt.networks.add_rule(vm_id, who, body)
    return JSONResponse({"rule": fw.rules[pos].to_wire(pos), "firewall": fw.to_wire(), "jobId": job_id}, status_code=201)


@router.get("/vms/{vm_id}/firewall/rules/{pos}", response_model=RuleOut, responses=ERRORS)
async def get_rule(vm_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse((await rt.networks.firewall(vm_id, who)).rule_at(pos).to_wire(pos))


@router.delete("/vms/{vm_id}/firewall/rules/{pos}", response_model=RuleChangeOut, responses=ERRORS)
async def delete_rule(vm_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Rules after `pos` move up one position."""
    fw, job_id = await rt.networks.delete_rule(vm_id, who, pos)
    return JSONResponse({"firewall": fw.to_wire(), "jobId": job_id})
