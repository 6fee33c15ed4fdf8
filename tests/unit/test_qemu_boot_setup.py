"""A qemu VM's CD-ROM, boot order and firmware on QEMU's command line (drivers/qemu/cmdline.py)
and in its vm.json: the ISO read-only and raw, boot indexes in the asked order, OVMF's code
read-only and the VM's own NVRAM, nothing of it for VMs defined before CD-ROM drives existed."""

import json
from pathlib import Path

import pytest

from vmplane.domain import BootSetup, Resources
from vmplane.drivers.qemu.cmdline import OVMF_CODE, build_argv
from vmplane.drivers.qemu.layout import VmConfig, VmPaths, mac_for

PATHS = VmPaths(Path("/var/lib/vmplane/vms/vm-abcdefgh1234"))


def config(**kw: object) -> VmConfig:
    values: dict[str, object] = {
        "id": "vm-abcdefgh1234", "uuid": "8c1e2f34-0a4b-4c5d-9e6f-7a8b9c0d1e2f", "name": "web-1", "resources": Resources(1, 512, 4),
        "mac": mac_for("vm-abcdefgh1234"), "cdrom_drive": True,
    }  # fmt: skip
    values.update(kw)
    return VmConfig(**values)  # type: ignore[arg-type]


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_an_iso_first_in_the_boot_order() -> None:
    argv = build_argv(config(boot_setup=BootSetup("/data/isos/iso-0123456789ab.iso", ("cdrom", "disk"))), PATHS, accel="tcg")
    drives, devices = after(argv, "-drive"), after(argv, "-device")
    assert "file=/data/isos/iso-0123456789ab.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on" in drives
    assert "ide-cd,drive=cd0,bus=ide.1,unit=1,id=cdrom0,bootindex=1" in devices
    assert "virtio-blk-pci,drive=disk0,id=vda,bootindex=2" in devices
    assert "ide-cd,drive=seed0,bus=ide.1,unit=0" in devices  # the seed stays the first CD-ROM
    assert not any("pflash" in d for d in drives)  # SeaBIOS


def test_an_empty_drive_and_the_default_order() -> None:
    argv = build_argv(config(), PATHS, accel="tcg")
    assert "if=none,id=cd0,media=cdrom,readonly=on" in after(argv, "-drive")
    devices = after(argv, "-device")
    assert (
        "virtio-blk-pci,drive=disk0,id=vda,bootindex=1" in devices and "ide-cd,drive=cd0,bus=ide.1,unit=1,id=cdrom0,bootindex=2" in devices
    )


def test_a_disk_only_order_puts_the_cdrom_last() -> None:
    devices = after(build_argv(config(boot_setup=BootSetup(None, ("disk",))), PATHS, accel="tcg"), "-device")
    assert (
        "virtio-blk-pci,drive=disk0,id=vda,bootindex=1" in devices and "ide-cd,drive=cd0,bus=ide.1,unit=1,id=cdrom0,bootindex=2" in devices
    )


def test_uefi_reads_ovmf_and_writes_only_its_own_nvram() -> None:
    drives = after(build_argv(config(boot_setup=BootSetup(firmware="uefi")), PATHS, accel="tcg"), "-drive")
    assert f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on" in drives
    assert f"if=pflash,format=raw,unit=1,file={PATHS.dir}/nvram.fd" in drives


def test_an_iso_path_with_commas_stays_one_option() -> None:
    drives = after(build_argv(config(boot_setup=BootSetup("/srv/a,b/iso-0123456789ab.iso")), PATHS, accel="tcg"), "-drive")
    assert any(d.startswith("file=/srv/a,,b/iso-0123456789ab.iso,format=raw,") for d in drives)


def test_a_vm_from_before_cdrom_drives_keeps_its_hardware() -> None:
    old = config(cdrom_drive=False)
    argv = build_argv(old, PATHS, accel="tcg")
    assert not any("cd0" in d for d in after(argv, "-drive")) and "virtio-blk-pci,drive=disk0,id=vda,bootindex=1" in after(argv, "-device")
    stored = old.to_json()
    del stored["bootSetup"], stored["cdromDrive"]  # a vm.json written before issue 24
    assert VmConfig.from_json(json.loads(json.dumps(stored))) == old


def test_the_boot_setup_survives_json_and_bad_values_are_refused() -> None:
    c = config(boot_setup=BootSetup("/data/isos/iso-0123456789ab.iso", ("cdrom", "disk"), "uefi"))
    assert VmConfig.from_json(json.loads(json.dumps(c.to_json()))) == c
    for bad in ({"order": ["floppy"]}, {"firmware": "coreboot"}):
        with pytest.raises(ValueError):
            BootSetup.from_wire(bad)
