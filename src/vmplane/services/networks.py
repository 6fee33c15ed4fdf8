"""Networks, IPAM, VM addresses and VM firewalls.

Addresses and firewalls live in the store; a `vm-network` job hands a VM's current NICs and
firewall to its node's driver, which enforces them (the job reads the store when it runs, so
the last change always wins and a crash loses nothing).
"""

from __future__ import annotations

import builtins
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import DEFAULT_ORG, Principal
from ..domain import Vm, VmNic
from ..domain.network import DEFAULT_NETWORK, NETWORK_TYPES, Firewall, Network, Nic, Rule, bridge_name, mac_for, parse_firewall, parse_rule
from ..errors import Conflict, InvalidRequest, NotFound, Reason
from ..net import ipam
from ..store import networks as net_q
from ..store import vms as vm_q
from .vms import check_name, get_visible_vm

if TYPE_CHECKING:
    from ..config import Settings
    from ..jobs.engine import JobEngine
    from ..store import Store
    from .tenancy import TenancyService


MAX_NICS = 8


@dataclass(frozen=True, slots=True)
class IpChange:
    address: str
    job_id: str


def network_of(row: Row[Any]) -> Network:
    """The node's view of a network. Tenants' bridges route in their organization's namespace;
    the operators' (and shared) networks route in the host's, as the node's own networks."""
    tenant = row.org_id if row.org_id not in (None, DEFAULT_ORG) else None
    return Network(row.id, row.name, row.type, row.subnet, row.gateway, row.ipv6_prefix, row.bridge, tenant)


def render_network(row: Row[Any], in_use: int | None = None) -> dict[str, Any]:
    first, last = ipam.usable(row.subnet)
    wire = network_of(row).to_wire()
    del wire["orgId"]  # (the node's view; callers see `shared`)
    out = {
        **wire,
        "shared": row.org_id is None,
        "createdAt": clock.rfc3339(row.created_at),
        "addressesTotal": last - first + 1,
    }
    if in_use is not None:
        out["addressesInUse"] = in_use
    return out


class NetworkService:
    def __init__(self, *, store: Store, settings: Settings, engine: JobEngine, tenancy: TenancyService) -> None:
        self.store = store
        self.settings = settings
        self.engine = engine
        self.tenancy = tenancy
        self._networks: dict[str, Network] = {}
        """networks by id: they never change, and one in use by a VM is never deleted"""

    # -- networks --------------------------------------------------------------------------

    async def ensure_default(self) -> None:
        """The shared user-mode network every VM joins unless told otherwise."""
        async with self.store.write() as conn:
            if await net_q.find_network(conn, DEFAULT_NETWORK, None) is None:
                subnet = str(ipam.check_subnet(self.settings.user_network_subnet, "VMPLANE_USER_NETWORK_SUBNET"))
                await net_q.insert_network(conn, {
                    "id": ids.new_id("net"), "name": DEFAULT_NETWORK, "org_id": None, "type": "user", "subnet": subnet,
                    "gateway": ipam.gateway(subnet, "user"), "ipv6_prefix": None, "bridge": None, "created_at": clock.now(),
                })  # fmt: skip

    async def create(self, who: Principal, name: str, type_: str, subnet: str | None, ipv6_prefix: str | None) -> Row[Any]:
        """A new network of the caller's organization. Tenants' subnets come from the operator's
        pool (named or, left out, the first free /24 of it); operators may take any private
        range. Overlaps are checked against the organization's own networks and the shared
        ones only (each organization's bridges have their own routing context on the node),
        and the error names only those."""
        check_name(name)
        if type_ not in NETWORK_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(NETWORK_TYPES)}, not {type_!r}", field="type")
        pool = ipaddress.IPv4Network(self.settings.tenant_subnet_pool)
        net = ipam.check_subnet(subnet) if subnet is not None else None
        if net is not None:
            ipam.check_range(net, pool, who.operator)
        elif who.operator:
            raise InvalidRequest("subnet is required for an operator's network (tenants get one from the pool)", field="subnet")
        v6 = ipam.check_ipv6_prefix(ipv6_prefix) if ipv6_prefix is not None else None
        if v6 is not None and type_ != "bridge":
            raise InvalidRequest("ipv6Prefix needs a bridge network (user-mode networks are IPv4 only here)", field="ipv6Prefix")
        network_id = ids.new_id("net")
        async with self.store.write() as conn:
            if await net_q.name_taken(conn, name, who.org_id):  # names are unique within an organization only
                raise Conflict(f"a network named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
            visible = await net_q.list_networks(conn, who.org_id)
            if net is None:
                net = ipam.free_subnet(pool, [ipaddress.IPv4Network(o.subnet) for o in visible])
            for other in visible:
                if ipaddress.IPv4Network(other.subnet).overlaps(net):
                    raise Conflict(f"subnet {net} overlaps network {other.name} ({other.subnet})", field="subnet")
                if v6 is not None and other.ipv6_prefix and ipaddress.IPv6Network(other.ipv6_prefix).overlaps(v6):
                    raise Conflict(f"ipv6Prefix {v6} overlaps network {other.name} ({other.ipv6_prefix})", field="ipv6Prefix")
            await self.tenancy.reserve(conn, who.org_id, networks=1)
            row = {
                "id": network_id, "name": name, "org_id": who.org_id, "type": type_, "subnet": str(net),
                "gateway": ipam.gateway(str(net), type_), "ipv6_prefix": str(v6) if v6 else None,
                "bridge": bridge_name(network_id) if type_ == "bridge" else None, "created_at": clock.now(),
            }  # fmt: skip
            await net_q.insert_network(conn, row)
            created = await net_q.get_network(conn, network_id)
        assert created is not None
        return created

    async def get(self, ref: str, who: Principal, field: str | None = None) -> Row[Any]:
        """A network the caller may use, by id or name: its organization's first, then the
        shared ones (such as `user`); another organization's does not exist for it."""
        async with self.store.read() as conn:
            row = await net_q.find_network(conn, ref, who.org_id)
        if row is None:
            if field is not None:
                raise InvalidRequest(f"{field} {ref!r} is not a network", field=field)
            raise NotFound(f"network {ref} does not exist")
        return row

    async def list(self, who: Principal) -> list[tuple[Row[Any], int]]:
        async with self.store.read() as conn:
            rows = await net_q.list_networks(conn, who.org_id)
            return [(r, await net_q.addresses_in_use(conn, r.id)) for r in rows]

    async def in_use(self, network_id: str) -> int:
        async with self.store.read() as conn:
            return await net_q.addresses_in_use(conn, network_id)

    async def delete(self, ref: str, who: Principal) -> None:
        row = await self.get(ref, who)
        if row.org_id is None:
            raise Conflict(f"network {row.name} is shared by every organization and cannot be deleted")
        async with self.store.write() as conn:
            used = await net_q.addresses_in_use(conn, row.id)
            if used:
                raise Conflict(f"network {row.name} still has {used} address(es) in use; delete its VMs first", inUse=used)
            await net_q.delete_network(conn, row.id)

    # -- VM creation: NICs and addresses ---------------------------------------------------

    async def resolve(self, refs: Sequence[str], who: Principal, where: str) -> builtins.list[Row[Any]]:
        """The networks a new VM joins (default: the shared user network, whatever the
        caller's own networks are named)."""
        if len(refs) > MAX_NICS:
            raise InvalidRequest(f"a VM joins at most {MAX_NICS} networks", field=where)
        if not refs:
            async with self.store.read() as conn:
                default = await net_q.find_network(conn, DEFAULT_NETWORK, None)
            if default is None:
                raise InvalidRequest(f"the shared network {DEFAULT_NETWORK!r} does not exist", field=where)
            return [default]
        rows = [await self.get(r, who, field=f"{where}[{i}].networkId") for i, r in enumerate(refs)]
        seen: set[str] = set()
        for i, r in enumerate(rows):
            if r.id in seen:
                raise InvalidRequest(f"network {r.name} is listed twice", field=f"{where}[{i}].networkId")
            seen.add(r.id)
        return rows

    async def allocate(self, conn: AsyncConnection, vms: Sequence[tuple[dict[str, Any], Sequence[Row[Any]]]]) -> None:
        """Give each new VM (row, networks) one NIC per network with a primary address, and
        record the NICs in the VM's spec. Runs inside the VM insert's transaction.

        The spec keeps a copy of each NIC's addresses (reads of a VM need no other table);
        `ip_addresses` decides who owns an address, and both change in one transaction."""
        want: dict[str, list[tuple[dict[str, Any], int]]] = {}
        nets: dict[str, Row[Any]] = {}
        nics: dict[str, list[VmNic]] = {}
        for row, networks in vms:
            nics[row["id"]] = [VmNic(n.id, n.name, mac_for(row["id"], i), (), n.type) for i, n in enumerate(networks)]
            for i, n in enumerate(networks):
                want.setdefault(n.id, []).append((row, i))
                nets[n.id] = n
        for network_id, owners in want.items():
            net = nets[network_id]
            addrs = await self._take(conn, net, [(vm["id"], nic, True) for vm, nic in owners])
            for a, (vm, nic) in zip(addrs, owners):
                entry = nics[vm["id"]][nic]
                ipv6 = ipam.ipv6_for(net.ipv6_prefix, entry.mac) if net.ipv6_prefix else None
                nics[vm["id"]][nic] = replace(entry, ips=(ipam.to_str(a),), ipv6=ipv6)
        for row, _ in vms:
            row["spec"]["nics"] = [n.to_json() for n in nics[row["id"]]]

    @staticmethod
    async def _take(conn: AsyncConnection, net: Row[Any], owners: Sequence[tuple[str, int, bool]]) -> builtins.list[int]:
        """Record one new address of `net` for each (vm id, NIC index, primary); retried when
        another transaction took one of the chosen addresses first."""
        now = clock.now()
        for _attempt in range(5):
            highest = await net_q.max_addr(conn, net.id)
            try:
                addrs = ipam.pick(net.subnet, len(owners), highest, None)
            except LookupError:
                addrs = ipam.pick(net.subnet, len(owners), highest, await net_q.taken_addrs(conn, net.id))
            rows = [
                {"network_id": net.id, "addr": a, "address": ipam.to_str(a), "vm_id": vm_id, "nic": nic, "is_primary": primary, "created_at": now}
                for a, (vm_id, nic, primary) in zip(addrs, owners)
            ]
            if await net_q.insert_addresses(conn, rows):
                return addrs
        raise Conflict(f"network {net.name}: addresses keep being taken; try again")

    # -- what a VM has ---------------------------------------------------------------------

    async def nics(self, conn: AsyncConnection, vm: Vm) -> tuple[Nic, ...]:
        """The VM's NICs for its driver (empty for VMs made before networks existed)."""
        specs = vm.spec.nics
        missing = {n.network_id for n in specs} - self._networks.keys()
        if missing:
            self._networks.update({k: network_of(r) for k, r in (await net_q.get_networks(conn, missing)).items()})
        return tuple(
            Nic(network=self._networks[n.network_id], mac=n.mac, ip=n.ips[0], aliases=n.ips[1:], ipv6=n.ipv6)
            for n in specs
            if n.network_id in self._networks and n.ips
        )

    async def firewall_of(self, conn: AsyncConnection, vm_id: str) -> Firewall:
        return Firewall.from_wire(await net_q.get_firewall(conn, vm_id))

    # -- additional addresses --------------------------------------------------------------

    async def add_ip(self, vm_ref: str, network_ref: str | None, who: Principal) -> IpChange:
        vm = await get_visible_vm(self.store, vm_ref, who)
        nic_specs = vm.spec.nics
        if not nic_specs:
            raise Conflict(f"VM {vm.id} was created before networks existed and has no managed NIC")
        if network_ref is None:
            nic = 0
        else:
            net = await self.get(network_ref, who, field="networkId")
            nic = next((i for i, n in enumerate(nic_specs) if n.network_id == net.id), -1)
            if nic < 0:
                raise InvalidRequest(f"VM {vm.id} has no NIC on network {net.name}", field="networkId")
        network_id = nic_specs[nic].network_id
        async with self.store.write() as conn:
            net_row = (await net_q.get_networks(conn, [network_id]))[network_id]
            (addr,) = await self._take(conn, net_row, [(vm.id, nic, False)])
            await self._set_ips(conn, vm.id, nic, lambda ips: [*ips, ipam.to_str(addr)])
            job_id = await self._apply(conn, vm, who)
        self.engine.wakeup()
        return IpChange(ipam.to_str(addr), job_id)

    async def release_ip(self, vm_ref: str, address: str, who: Principal) -> IpChange:
        vm = await get_visible_vm(self.store, vm_ref, who)
        try:
            wanted = str(ipaddress.ip_address(address))
        except ValueError:
            raise InvalidRequest(f"{address!r} is not an IP address", field="ip") from None
        async with self.store.write() as conn:
            mine = (await net_q.addresses_of(conn, [vm.id]))[vm.id]
            hit = next((a for a in mine if a.address == wanted), None)
            if hit is None:
                raise NotFound(f"VM {vm.id} has no address {wanted}")
            if hit.is_primary:
                raise Conflict(f"{wanted} is the primary address of NIC {hit.nic}; it goes with the VM")
            if len(mine) == 1:
                raise Conflict(f"{wanted} is the VM's last address")
            await net_q.release_address(conn, vm.id, hit.network_id, hit.addr)
            await self._set_ips(conn, vm.id, hit.nic, lambda ips: [i for i in ips if i != wanted])
            job_id = await self._apply(conn, vm, who)
        self.engine.wakeup()
        return IpChange(wanted, job_id)

    async def addresses(self, vm_ref: str, who: Principal) -> builtins.list[dict[str, Any]]:
        vm = await get_visible_vm(self.store, vm_ref, who)
        async with self.store.read() as conn:
            mine = (await net_q.addresses_of(conn, [vm.id]))[vm.id]
            nets = await net_q.get_networks(conn, {a.network_id for a in mine})
        nic_specs = vm.spec.nics
        return [
            {"ip": a.address, "networkId": a.network_id, "network": nets[a.network_id].name if a.network_id in nets else None,
             "nic": a.nic, "mac": nic_specs[a.nic].mac if a.nic < len(nic_specs) else None, "primary": a.is_primary,
             "createdAt": clock.rfc3339(a.created_at)}
            for a in mine
        ]  # fmt: skip

    # -- firewalls -------------------------------------------------------------------------

    async def firewall(self, vm_ref: str, who: Principal) -> Firewall:
        vm = await get_visible_vm(self.store, vm_ref, who)
        async with self.store.read() as conn:
            return await self.firewall_of(conn, vm.id)

    async def set_options(self, vm_ref: str, who: Principal, enabled: bool | None, policy_in: str | None, policy_out: str | None) -> tuple[Firewall, str]:
        return await self.change_firewall(vm_ref, who, lambda fw: fw.with_options(enabled, policy_in, policy_out))

    async def replace_firewall(self, vm_ref: str, who: Principal, body: Any) -> tuple[Firewall, str]:
        new = parse_firewall(body, "body")
        return await self.change_firewall(vm_ref, who, lambda _fw: new)

    async def add_rule(self, vm_ref: str, who: Principal, body: Any) -> tuple[Firewall, int, str]:
        rule: Rule = parse_rule(body)
        pos = body.get("pos") if isinstance(body, dict) else None
        if pos is not None and (not isinstance(pos, int) or isinstance(pos, bool)):
            raise InvalidRequest("pos must be an integer", field="pos")
        fw, job_id = await self.change_firewall(vm_ref, who, lambda fw: fw.with_rule(rule, pos))
        return fw, len(fw.rules) - 1 if pos is None else pos, job_id

    async def delete_rule(self, vm_ref: str, who: Principal, pos: int) -> tuple[Firewall, str]:
        return await self.change_firewall(vm_ref, who, lambda fw: fw.without_rule(pos))

    async def change_firewall(self, vm_ref: str, who: Principal, edit: Callable[[Firewall], Firewall]) -> tuple[Firewall, str]:
        """Apply `edit` to the VM's stored firewall and queue the job that enforces the result."""
        vm = await get_visible_vm(self.store, vm_ref, who)
        async with self.store.write() as conn:
            new = edit(await self.firewall_of(conn, vm.id))
            await net_q.set_firewall(conn, vm.id, new.to_wire(), clock.now())
            job_id = await self._apply(conn, vm, who)
        self.engine.wakeup()
        return new, job_id

    @staticmethod
    async def _set_ips(conn: AsyncConnection, vm_id: str, nic: int, change: Callable[[builtins.list[str]], builtins.list[str]]) -> None:
        """Update the copy of a NIC's addresses in the VM's spec (same transaction as IPAM)."""
        vm = await vm_q.get_vm(conn, vm_id)
        if vm is None:
            raise NotFound(f"VM {vm_id} does not exist")
        nics = list(vm.spec.nics)
        nics[nic] = replace(nics[nic], ips=tuple(change(list(nics[nic].ips))))
        await vm_q.set_vm(conn, vm_id, spec=vm.spec.with_(nics=tuple(nics)).to_json())

    async def _apply(self, conn: AsyncConnection, vm: Vm, who: Principal) -> str:
        return await self.engine.submit(conn, "vm-network", who, [(vm.id, {})])

