"""IPv6 ingress policies of VMs (domain.ingress): read from and written into each VM's firewall,
which stays the one thing nodes enforce; every change is applied by a `vm-network` job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..auth import Principal
from ..domain.ingress import Allow, Ipv6Ingress, parse_mode
from ..domain.network import Firewall

if TYPE_CHECKING:
    from ..store import Store
    from .networks import NetworkService


class IngressService:
    def __init__(self, *, store: Store, networks: NetworkService) -> None:
        self.store = store
        self.networks = networks

    async def policy(self, vm_ref: str, who: Principal) -> Ipv6Ingress:
        return Ipv6Ingress.of(await self.networks.firewall(vm_ref, who))

    async def policies(self, vm_ids: list[str]) -> dict[str, Ipv6Ingress]:
        """The policies of VMs the caller has already been shown, by VM id (one read)."""
        async with self.store.read() as conn:
            return {vm_id: Ipv6Ingress.of(await self.networks.firewall_of(conn, vm_id)) for vm_id in vm_ids}

    async def change(self, vm_ref: str, who: Principal, mode: str | None, allow: tuple[Allow, ...] | None) -> tuple[Ipv6Ingress, str]:
        """Set the mode and/or the allow rules (None keeps what the VM has) in one transaction;
        returns the policy now in force and the id of the job applying it on the VM's node."""
        if mode is not None:
            parse_mode(mode, "mode")

        def edit(fw: Firewall) -> Firewall:
            return Ipv6Ingress.of(fw).with_changes(mode, allow).apply_to(fw)

        # NetworkService.change_firewall: read, edit and store the firewall in one transaction and
        # submit the job that applies it (the one way firewalls change)
        fw, job_id = await self.networks.change_firewall(vm_ref, who, edit)
        return Ipv6Ingress.of(fw), job_id
