"""Usage metering for billing: a VM is billed from the moment it is allocated (its create is
accepted) until it is deleted, at the hourly price of its instance type (or the price its
create recorded); a resize starts a new span at the new shape's price. A create that fails is
billed only the seconds it existed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..auth import Principal
from ..config import Settings
from ..domain import StoredSpec
from ..errors import InvalidRequest, Reason
from ..store import usage as usage_q

if TYPE_CHECKING:
    from ..store import Store


MAX_DAYS = 90


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
    def recorded_price(vm: dict[str, Any]) -> tuple[str, float] | None:
        """The (instance type, cents per hour) a VM was created at, when the request that made
        it set a price (the Blue Lobster face records its instance type's); None otherwise."""
        spec = StoredSpec.from_json(vm.get("spec"))
        cents = spec.price_cents_per_hour
        if isinstance(cents, (int, float)) and not isinstance(cents, bool) and cents >= 0:
            return str(spec.instance_type or "custom"), float(cents)
        return None

    def span(self, vm: dict[str, Any], at: float, price: tuple[str, float] | None = None) -> dict[str, Any]:
        kind, cents = price or self.price(vm["cpu"], vm["ram_mb"])
        return {
            "vm_id": vm["id"], "vm_name": vm["name"], "org_id": vm["org_id"], "team_id": vm.get("team_id"),
            "instance_type": kind, "cpu": vm["cpu"], "ram_mb": vm["ram_mb"], "disk_gb": vm["disk_gb"],
            "cents_per_hour": cents, "start": at, "end": None,
        }  # fmt: skip

    async def allocated(self, conn: AsyncConnection, vms: list[dict[str, Any]]) -> None:
        now = clock.now()
        await usage_q.open_spans(conn, [self.span(v, now, self.recorded_price(v)) for v in vms])

    async def released(self, conn: AsyncConnection, vm_id: str) -> None:
        await usage_q.close_span(conn, vm_id, clock.now())

    async def reshaped(self, conn: AsyncConnection, vm: dict[str, Any]) -> None:
        now = clock.now()
        await usage_q.close_span(conn, vm["id"], now)
        await usage_q.open_spans(conn, [self.span(vm, now)])

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
        per_vm: dict[str, dict[str, Any]] = {}
        for r in rows:
            hours = (min(r.end if r.end is not None else now, end) - max(r.start, start)) / 3600
            if hours <= 0:
                continue
            item = per_vm.setdefault(r.vm_id, {"vmId": r.vm_id, "name": r.vm_name, "hours": 0.0, "costCents": 0.0, "spans": []})
            item["hours"] += hours
            item["costCents"] += hours * r.cents_per_hour
            item["spans"].append({"instanceType": r.instance_type, "cpu": r.cpu, "ramMb": r.ram_mb, "centsPerHour": r.cents_per_hour,
                                  "from": clock.rfc3339(max(r.start, start)), "to": clock.rfc3339(min(r.end or now, end)), "hours": round(hours, 4)})  # fmt: skip
        items = [{**v, "hours": round(v["hours"], 4), "costCents": round(v["costCents"], 2)} for v in per_vm.values()]
        return {
            "orgId": who.org_id, "start": clock.rfc3339(start), "end": clock.rfc3339(end), "items": items,
            "totalHours": round(sum(i["hours"] for i in items), 4), "totalCents": round(sum(i["costCents"] for i in items), 2),
        }  # fmt: skip
