"""The HypervisorDriver contract, as tests. Every driver runs this suite:

    class TestSimDriver(DriverContract):
        async def make_driver(self, state_dir): ...
"""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from vmplane import ids
from vmplane.domain import Resources, VmSpec
from vmplane.drivers.base import HypervisorDriver, PowerState
from vmplane.errors import DriverError, InvalidState


class DriverContract:
    """Subclasses implement `make_driver(state_dir)` and may set `boot_image` (a template
    image path the VMs boot from) via `prepare_image(driver, tmp_path)`."""

    async def make_driver(self, state_dir: Path) -> HypervisorDriver:
        raise NotImplementedError

    async def prepare_image(self, driver: HypervisorDriver, tmp_path: Path) -> tuple[str | None, str | None]:
        """(template_id, image path) VMs are created from; (None, None) for a blank disk."""
        return None, None

    @pytest.fixture
    async def env(self, tmp_path: Path) -> Any:
        state = tmp_path / "driver-state"
        driver = await self.make_driver(state)
        await driver.open()
        template_id, image = await self.prepare_image(driver, tmp_path)
        created: list[str] = []

        def spec(**kw: Any) -> VmSpec:
            vm_id = ids.new_id("vm")
            created.append(vm_id)
            return VmSpec(
                id=vm_id,
                uuid=ids.new_uuid(),
                name=kw.get("name", "t-" + vm_id[3:]),
                resources=kw.get("resources", Resources(1, 256, 2)),
                template_id=template_id,
                template_image=kw.get("image", image),
                template_boot=getattr(self, "template_boot", None),
            )

        class Env:
            pass

        e = Env()
        e.driver, e.spec, e.state, e.tmp = driver, spec, state, tmp_path  # type: ignore[attr-defined]
        yield e
        for vm_id in created:
            await driver.delete_vm(vm_id)
        await driver.close()

    async def test_node_info_reports_capacity(self, env: Any) -> None:
        info = await env.driver.node_info()
        assert info.cpu > 0 and info.ram_mb > 0 and info.disk_gb > 0 and info.hostname

    async def test_create_is_idempotent_and_leaves_vm_stopped(self, env: Any) -> None:
        spec = env.spec()
        await env.driver.create_vm(spec)
        await env.driver.create_vm(spec)
        rt = await env.driver.get_vm(spec.id)
        assert rt is not None and rt.state == PowerState.STOPPED
        assert [v.vm_id for v in await env.driver.list_vms()].count(spec.id) == 1

    async def test_power_cycle_of_a_vm(self, env: Any) -> None:
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        await d.start_vm(spec.id)
        rt = await d.get_vm(spec.id)
        assert rt.state == PowerState.RUNNING and rt.started_at is not None
        await d.start_vm(spec.id)  # no-op
        assert (await d.get_vm(spec.id)).state == PowerState.RUNNING
        await d.reboot_vm(spec.id)
        assert (await d.get_vm(spec.id)).state == PowerState.RUNNING
        await d.power_cycle_vm(spec.id)
        assert (await d.get_vm(spec.id)).state == PowerState.RUNNING
        assert await d.shutdown_vm(spec.id, timeout=30) is True
        assert (await d.get_vm(spec.id)).state == PowerState.STOPPED
        assert await d.shutdown_vm(spec.id, timeout=30) is True  # no-op when stopped
        await d.start_vm(spec.id)
        await d.stop_vm(spec.id)
        assert (await d.get_vm(spec.id)).state == PowerState.STOPPED
        await d.stop_vm(spec.id)  # no-op

    async def test_reboot_needs_a_running_vm(self, env: Any) -> None:
        spec = env.spec()
        await env.driver.create_vm(spec)
        with pytest.raises(InvalidState):
            await env.driver.reboot_vm(spec.id)

    async def test_guest_state_needs_a_running_vm(self, env: Any) -> None:
        spec = env.spec()
        await env.driver.create_vm(spec)
        with pytest.raises(InvalidState):
            await env.driver.guest_state(spec.id)
        with pytest.raises(InvalidState):
            await env.driver.guest_state(spec.id, wait=0.5)

    async def test_delete_is_idempotent_and_complete(self, env: Any) -> None:
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        await d.start_vm(spec.id)
        await d.delete_vm(spec.id)
        await d.delete_vm(spec.id)
        assert await d.get_vm(spec.id) is None
        assert spec.id not in [v.vm_id for v in await d.list_vms()]

    async def test_calls_on_an_unknown_vm_fail_cleanly(self, env: Any) -> None:
        with pytest.raises(DriverError):
            await env.driver.start_vm("vm-doesnotexist")
        assert await env.driver.get_vm("vm-doesnotexist") is None

    async def test_display_shows_a_running_vms_screen(self, env: Any) -> None:
        """With `capabilities.display`: a PNG of the screen (refused past `max_bytes`) and a VNC
        stream (QEMU's RFB greeting), only while the VM runs; without it, DriverError."""
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        if not d.capabilities.display:
            with pytest.raises(DriverError):
                await d.screenshot(spec.id, 1 << 20)
            with pytest.raises(DriverError):
                await d.open_vnc(spec.id)
            return
        with pytest.raises(InvalidState):
            await d.screenshot(spec.id, 1 << 20)
        with pytest.raises(InvalidState):
            await d.open_vnc(spec.id)
        await d.start_vm(spec.id)
        png = await d.screenshot(spec.id, 16 << 20)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 16 << 20
        with pytest.raises(DriverError):
            await d.screenshot(spec.id, 16)  # larger than that: refused
        reader, writer = await d.open_vnc(spec.id)
        try:
            assert await asyncio.wait_for(reader.readexactly(12), 10) == b"RFB 003.008\n"
        finally:
            writer.close()
        await d.stop_vm(spec.id)

    async def test_disks_grow_but_never_shrink(self, env: Any) -> None:
        d, spec = env.driver, env.spec(resources=Resources(1, 256, 2))
        await d.create_vm(spec)
        await d.resize_vm(spec.id, Resources(2, 256, 3))
        await d.resize_vm(spec.id, Resources(2, 256, 3))  # idempotent
        with pytest.raises(DriverError):
            await d.resize_vm(spec.id, Resources(2, 256, 1))

    async def test_running_shape_waits_for_a_restart(self, env: Any) -> None:
        """`VmRuntime.running`: what the VM's process has. CPU and RAM of a resize wait for a
        power-cycle or stop+start (a reboot keeps the process); a disk grows live."""
        d, spec = env.driver, env.spec(resources=Resources(1, 256, 2))
        await d.create_vm(spec)
        assert (await d.get_vm(spec.id)).running is None  # stopped
        await d.start_vm(spec.id)
        assert (await d.get_vm(spec.id)).running == Resources(1, 256, 2)
        await d.resize_vm(spec.id, Resources(2, 384, 3))
        hot = d.capabilities.hot_resize_cpu_ram
        assert (await d.get_vm(spec.id)).running == (Resources(2, 384, 3) if hot else Resources(1, 256, 3))
        await d.reboot_vm(spec.id)
        assert (await d.get_vm(spec.id)).running == (Resources(2, 384, 3) if hot else Resources(1, 256, 3))
        await d.power_cycle_vm(spec.id)
        rt = await d.get_vm(spec.id)
        assert rt.state == PowerState.RUNNING and rt.running == Resources(2, 384, 3)
        await d.stop_vm(spec.id)
        assert (await d.get_vm(spec.id)).running is None

    async def test_bad_image_is_refused(self, env: Any) -> None:
        empty = env.tmp / "empty.img"
        empty.write_bytes(b"")

        async def progress(_p: int, _m: str) -> None:
            return None

        with pytest.raises(DriverError):
            await env.driver.import_image("tpl-empty0000000", empty, progress)

    async def test_snapshots_clone_and_revert(self, env: Any) -> None:
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        await d.start_vm(spec.id)
        snap = ids.new_id("snap")
        info = await d.snapshot_vm(spec.id, snap)  # live
        assert info.format == "qcow2" and info.virtual_size > 0
        assert (await d.snapshot_vm(spec.id, snap)).path == info.path  # idempotent
        assert (await d.get_vm(spec.id)).state == PowerState.RUNNING
        clone = env.spec(image=str(info.path))
        await d.create_vm(clone)  # a VM from the snapshot
        assert (await d.get_vm(clone.id)).state == PowerState.STOPPED
        with pytest.raises(InvalidState):
            await d.revert_vm(spec.id, str(info.path))  # running
        await d.stop_vm(spec.id)
        offline = await d.snapshot_vm(spec.id, ids.new_id("snap"))
        await d.revert_vm(spec.id, str(info.path))
        await d.start_vm(spec.id)
        assert (await d.get_vm(spec.id)).state == PowerState.RUNNING
        await d.delete_snapshot(offline.path.stem if offline.path.suffix else offline.path.name)
        await d.delete_vm(clone.id)
        await d.delete_snapshot(snap)
        await d.delete_snapshot(snap)  # idempotent

    async def test_vms_outlive_the_driver(self, env: Any) -> None:
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        await d.start_vm(spec.id)
        before = await d.get_vm(spec.id)
        await d.close()
        again = await self.make_driver(env.state)
        await again.open()
        try:
            rt = await again.get_vm(spec.id)
            assert rt is not None and rt.state == PowerState.RUNNING
            assert rt.started_at == pytest.approx(before.started_at, abs=1)
            await again.stop_vm(spec.id)
            assert (await again.get_vm(spec.id)).state == PowerState.STOPPED
        finally:
            await again.delete_vm(spec.id)
            await again.close()
        await d.open()  # the fixture's driver cleans up with a fresh view

    async def test_set_network_records_nics_and_firewall_and_is_idempotent(self, env: Any) -> None:
        import dataclasses

        from vmplane.domain.network import Network, Nic, mac_for, parse_firewall

        d = env.driver
        user = Network("net-user00000000", "user", "user", "10.0.0.0/16", "10.0.0.2")
        spec = env.spec()
        spec = dataclasses.replace(spec, nics=(Nic(user, mac_for(spec.id), "10.0.0.4"),))
        await d.create_vm(spec)
        assert "user" in d.capabilities.network_types
        fw = parse_firewall({"enabled": True, "policyIn": "DROP", "rules": [{"type": "in", "action": "ACCEPT", "dport": "22"}]})
        nics = (Nic(user, mac_for(spec.id), "10.0.0.4", ("10.0.0.9",)),)
        await d.set_network(spec.id, nics, fw)
        await d.set_network(spec.id, nics, fw)
        assert (await d.get_vm(spec.id)).state == PowerState.STOPPED
        with pytest.raises(DriverError):
            await d.set_network(ids.new_id("vm"), nics, fw)

    async def test_what_a_node_tells_of_itself_and_its_vms_processes(self, env: Any) -> None:
        d, spec = env.driver, env.spec()
        caps = d.capabilities
        assert caps.hypervisor in ("qemu", "sim") and (caps.kind == "remote") != caps.local
        assert d.offline is None and d.forward_host()
        assert d.host_process(spec.id) == (None, None)  # not defined here
        await d.create_vm(spec)
        assert d.host_process(spec.id)[0] is None  # stopped
        await d.start_vm(spec.id)
        pid, _serial = d.host_process(spec.id)
        if caps.local and caps.real_vms:
            assert pid is not None and Path(f"/proc/{pid}").exists()
        else:
            assert pid is None
        await d.stop_vm(spec.id)
        assert d.host_process(spec.id)[0] is None
