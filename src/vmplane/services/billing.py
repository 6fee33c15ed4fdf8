"""Usage metering for billing: a VM is billed from the moment it is allocated (its create is
accepted) until it is deleted, at the hourly price of its instance type (or the price its
create recorded); a resize starts a new span at the new shape's price. A create that fails is
billed only the seconds it existed.

A span keeps what a billing row needs once its VM is gone: the VM's uuid, VMID, node, first
IPv4 address (address/prefix), template and GPU count, written when the span opens and again
when it closes (the node and the address may only be known by then). A report shows, per VM,
those facts (a live VM's as they are now; a gone VM's name and display name as they were when it
went, after any rename), its hours, its exact cost and what is billed: whole
cents, the exact cost rounded up to the next cent once per VM and period."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..auth import Principal
from ..config import Settings
from ..domain import StoredSpec, Vm
from ..errors import InvalidRequest, Reason
from ..store import networks as net_q
from ..store import usage as usage_q
from ..store import vms as vm_q

if TYPE_CHECKING:
    from ..store import Store


MAX_DAYS = 90
FACTS = ("vm_uuid", "vmid", "node_id", "ip_address", "template_name", "gpu_count", "display_name")
"""the columns of a span that describe its VM (beside its name, shape and price)"""


def whole_cents(exact: float) -> int:
    """Whole cents for an exact amount: a partial cent counts as a whole one, as a billing
    system rounds (to micro-cents first, so 6.0000000001 from float sums is 6, not 7)."""
    return math.ceil(round(exact, 6))


def address_with_prefix(vm: Vm, networks: dict[str, Row[Any]]) -> str | None:
    """The VM's first IPv4 address as `address/prefix` (its network's prefix length)."""
    for nic in vm.spec.nics:
        for ip in nic.ips:
            if ":" not in ip:
                net = networks.get(nic.network_id)
                return f"{ip}/{ipaddress.ip_network(net.subnet, strict=False).prefixlen}" if net is not None else ip
    return None


class Billing:
    def __init__(self, *, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def price(self, cpu: int, ram_mb: int) -> tuple[str, float]:
        """(instance type, cents per hour) of a VM shape."""
        s: Settings = self.settings
        for name, (c, r, cents) in s.instance_types.items():
            if (c, r) == (cpu, ram_mb):
                return name, cents
        return "custom", cpu * s.custom_cents_per_vcpu_hour + ram_mb / 1024 * s.custom_cents_per_gb_ram_hour

    @staticmethod
    def recorded_price(vm: Vm) -> tuple[str, float] | None:
        """The (instance type, cents per hour) a VM was created at, when the request that made
        it set a price (the Blue Lobster face records its instance type's); None otherwise."""
        spec: StoredSpec = vm.spec
        cents = spec.price_cents_per_hour
        if isinstance(cents, (int, float)) and not isinstance(cents, bool) and cents >= 0:
            return str(spec.instance_type or "custom"), float(cents)
        return None

    @staticmethod
    async def facts(conn: AsyncConnection, vms: Iterable[Vm]) -> dict[str, dict[str, Any]]:
        """Per VM id, what its spans keep of it (FACTS)."""
        vms = list(vms)
        networks = await net_q.get_networks(conn, (n.network_id for vm in vms for n in vm.spec.nics))
        return {
            vm.id: {"vm_uuid": vm.uuid, "vmid": vm.vmid, "node_id": vm.node_id, "ip_address": address_with_prefix(vm, networks),
                    "template_name": vm.spec.source_name, "gpu_count": len(vm.spec.pci_passthrough),
                    "vm_name": vm.name, "display_name": vm.display_name}
            for vm in vms
        }  # fmt: skip

    def span(self, vm: Vm, at: float, facts: dict[str, Any], price: tuple[str, float] | None = None) -> dict[str, Any]:
        kind, cents = price or self.price(vm.cpu, vm.ram_mb)
        return {
            "vm_id": vm.id, "vm_name": vm.name, "org_id": vm.org_id, "team_id": vm.team_id,
            "instance_type": kind, "cpu": vm.cpu, "ram_mb": vm.ram_mb, "disk_gb": vm.disk_gb,
            "cents_per_hour": cents, "start": at, "end": None, **facts,
        }  # fmt: skip

    async def allocated(self, conn: AsyncConnection, vms: list[dict[str, Any]]) -> None:
        """Open a span for each VM just inserted (rows of `vms`, in the insert's transaction)."""
        now = clock.now()
        records = await vm_q.get_vms(conn, [v["id"] for v in vms])
        facts = await self.facts(conn, records)
        await usage_q.open_spans(conn, [self.span(v, now, facts[v.id], self.recorded_price(v)) for v in records])

    async def released(self, conn: AsyncConnection, vm_id: str) -> None:
        """Close the VM's open span, keeping its facts as they are now (before its row goes)."""
        vm = await vm_q.get_vm(conn, vm_id)
        facts = (await self.facts(conn, [vm]))[vm.id] if vm is not None else {}
        await usage_q.close_span(conn, vm_id, clock.now(), facts)

    async def reshaped(self, conn: AsyncConnection, vm: dict[str, Any]) -> None:
        """Close the VM's span and open one at the shape (cpu, ram_mb, disk_gb) `vm` has now."""
        now = clock.now()
        record = await vm_q.get_vm(conn, vm["id"])
        if record is None:
            return
        record = replace(record, cpu=vm["cpu"], ram_mb=vm["ram_mb"], disk_gb=vm["disk_gb"])
        facts = (await self.facts(conn, [record]))[record.id]
        await usage_q.close_span(conn, record.id, now, facts)
        await usage_q.open_spans(conn, [self.span(record, now, facts)])

    async def report(self, who: Principal, start: float | None, end: float | None) -> dict[str, Any]:
        now = clock.now()
        end = now if end is None else end
        start = end - 30 * 86400 if start is None else start
        if end <= start:
            raise InvalidRequest("end must be after start", field="end")
        if end - start > MAX_DAYS * 86400:
            raise InvalidRequest(f"the period may be at most {MAX_DAYS} days", field="end", reason=Reason.OVER_LIMIT)
        async with self.store.read() as conn:
            rows = await usage_q.spans(conn, who.org_id, start, end, who.team_id)
            vm_ids = list(dict.fromkeys(r.vm_id for r in rows))
            live = {v.id: v for v in await vm_q.get_vms(conn, vm_ids)} if vm_ids else {}
            now_facts = await self.facts(conn, live.values())
            lifetimes = await usage_q.lifetimes(conn, [i for i in vm_ids if i not in live])
        per_vm: dict[str, dict[str, Any]] = {}
        for r in rows:
            hours = (min(r.end if r.end is not None else now, end) - max(r.start, start)) / 3600
            if hours <= 0:
                continue
            item = per_vm.setdefault(r.vm_id, {"vmId": r.vm_id, "name": r.vm_name, "hours": 0.0, "costCents": 0.0, "spans": [], "facts": {}})
            item["hours"] += hours
            item["costCents"] += hours * r.cents_per_hour
            item["facts"].update({k: getattr(r, k) for k in FACTS if getattr(r, k) is not None})  # the newest span's, where known
            item["last"] = r
            item["spans"].append({"instanceType": r.instance_type, "cpu": r.cpu, "ramMb": r.ram_mb, "diskGb": r.disk_gb,
                                  "centsPerHour": r.cents_per_hour, "from": clock.rfc3339(max(r.start, start)),
                                  "to": clock.rfc3339(min(r.end or now, end)), "hours": round(hours, 4)})  # fmt: skip
        items = [self._item(v, live.get(vm_id), now_facts.get(vm_id), lifetimes.get(vm_id)) for vm_id, v in per_vm.items()]
        return {
            "orgId": who.org_id, "start": clock.rfc3339(start), "end": clock.rfc3339(end), "items": items,
            "totalHours": round(sum(i["hours"] for i in items), 4), "totalCents": round(sum(i["costCents"] for i in items), 2),
            "totalBilledCents": sum(i["billedCents"] for i in items),
        }  # fmt: skip

    @staticmethod
    def _item(v: dict[str, Any], vm: Vm | None, facts: dict[str, Any] | None, lifetime: tuple[float, float | None] | None) -> dict[str, Any]:
        """One VM's row of a report: its kept facts (a live VM's as they are now), its last
        span's shape and price, its hours, exact cost and billed whole cents."""
        last, kept = v["last"], {**v["facts"], **{k: x for k, x in (facts or {}).items() if x is not None}}
        deleted_at = lifetime[1] if vm is None and lifetime is not None else None
        created_at = vm.created_at if vm is not None else (lifetime[0] if lifetime is not None else last.start)
        return {
            "vmId": v["vmId"], "vmid": kept.get("vmid"), "uuid": kept.get("vm_uuid"), "name": vm.name if vm is not None else last.vm_name,
            "displayName": vm.display_name if vm is not None else (kept.get("display_name") or last.vm_name),
            "status": vm.status if vm is not None else "deleted", "nodeId": kept.get("node_id"), "ipAddress": kept.get("ip_address"),
            "cpu": last.cpu, "ramMb": last.ram_mb, "diskGb": last.disk_gb, "gpuCount": kept.get("gpu_count") or 0,
            "instanceType": last.instance_type, "templateName": kept.get("template_name"), "centsPerHour": last.cents_per_hour,
            "createdAt": clock.rfc3339(created_at),
            "updatedAt": clock.rfc3339(vm.updated_at if vm is not None else (deleted_at or last.end or last.start)),
            "deletedAt": clock.rfc3339(deleted_at) if deleted_at is not None else None,
            "hours": round(v["hours"], 4), "costCents": round(v["costCents"], 2), "billedCents": whole_cents(v["costCents"]),
            "spans": v["spans"],
        }  # fmt: skip
