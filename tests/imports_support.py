"""Helpers of the import tests: OVF descriptors and OVAs built with qemu-img and tarfile."""

import contextlib
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ovf_descriptor(name: str, cpu: int, memory_mb: int, disk_file: str, disk_size: int, capacity_gib: int, networks: tuple[str, ...] = ("VM Network",), cdrom: bool = True) -> str:
    nics = "".join(
        f"""
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>{net}</rasd:Connection>
        <rasd:ElementName>Network adapter {i + 1}</rasd:ElementName>
        <rasd:InstanceID>{10 + i}</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>"""
        for i, net in enumerate(networks)
    )
    cd = """
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>""" if cdrom else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="{disk_file}" ovf:id="file1" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity_gib}" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    {"".join(f'<Network ovf:name="{n}"><Description>{n}</Description></Network>' for n in networks)}
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" ovf:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Other Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>{cpu} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpu}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>{memory_mb}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory_mb}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>{nics}{cd}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def to_vmdk(source: Path, dest: Path, stream_optimized: bool = True) -> None:
    opts = ["-o", "subformat=streamOptimized"] if stream_optimized else []
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", *opts, str(source), str(dest)], check=True, capture_output=True)


def make_ova(dest: Path, disk: Path, name: str = "imported-vm", cpu: int = 1, memory_mb: int = 256, networks: tuple[str, ...] = ("VM Network",)) -> Path:
    """An OVA (tar: descriptor first, then the stream-optimized VMDK) of `disk`."""
    work = dest.parent / (dest.stem + "-parts")
    work.mkdir(parents=True, exist_ok=True)
    vmdk = work / f"{name}-disk1.vmdk"
    to_vmdk(disk, vmdk)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(disk)], check=True, capture_output=True, text=True).stdout
    import json

    capacity_gib = max(1, -(-json.loads(info)["virtual-size"] // 2**30))
    ovf = work / f"{name}.ovf"
    ovf.write_text(ovf_descriptor(name, cpu, memory_mb, vmdk.name, vmdk.stat().st_size, capacity_gib, networks))
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(ovf, arcname=ovf.name)
        tar.add(vmdk, arcname=vmdk.name)
    return dest


def vcsim_binary() -> str | None:
    """govmomi's vcsim as scripts/build-vcsim.sh caches it (or $VMPLANE_VCSIM, or on PATH)."""
    import os
    import shutil

    explicit = os.environ.get("VMPLANE_VCSIM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    cache = os.environ.get("VMPLANE_VCSIM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vmplane", "vcsim")
    built = os.path.join(cache, "vcsim")
    return built if os.access(built, os.X_OK) else shutil.which("vcsim")


def require_vcsim() -> str:
    """The vcsim binary; skips without it, unless VMPLANE_REQUIRE_VCSIM=1 (CI), where it fails."""
    import os

    import pytest

    found = vcsim_binary()
    if found:
        return found
    if os.environ.get("VMPLANE_REQUIRE_VCSIM") == "1":
        pytest.fail("VMPLANE_REQUIRE_VCSIM=1 but vcsim is not built (scripts/build-vcsim.sh)")
    pytest.skip("vcsim is not built (scripts/build-vcsim.sh)")


@contextlib.contextmanager
def running_vcsim(root: Path, username: str, password: str) -> Iterator[dict[str, str]]:
    """govmomi's vCenter simulator on a free loopback port, its datastores under `root`:
    {url, addr} once it listens; stopped on leaving (skips without it, see require_vcsim)."""
    import os
    import re
    import time

    binary = require_vcsim()
    out = root / "vcsim.out"
    env = {**os.environ, "TMPDIR": str(root)}  # its datastores are directories under $TMPDIR
    proc = subprocess.Popen([binary, "-l", "127.0.0.1:0", "-username", username, "-password", password], stdout=out.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while not (m := re.search(r"GOVC_URL=https://[^@]+@(127\.0\.0\.1:\d+)/sdk", out.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        yield {"url": f"https://{m.group(1)}/sdk", "addr": m.group(1)}
    finally:
        proc.terminate()
        proc.wait(10)


def bootable_ova(s: Any, tmp_path: Path, name: str) -> Path:
    """An OVA of a BIOS-bootable tiny-linux disk (syslinux, its kernel and initramfs), in the
    directory the server's imports may read."""
    import shutil

    import pytest

    from vmplane.images import tiny_dir
    from vmplane.images.tiny import load_tiny_image

    from .e2e.test_qemu_vm import bootable_disk

    if not all(shutil.which(t) for t in ("mkfs.fat", "mcopy", "syslinux")):
        pytest.fail("syslinux, mtools or dosfstools missing (scripts/install-qemu.sh installs them)")
    image = load_tiny_image(tiny_dir(s.rt.settings.resolved_image_cache()))
    assert image is not None
    disk = tmp_path / f"{name}.raw"
    bootable_disk(disk, image.kernel, image.initrd)
    drop = s.rt.data_dir / "imports"  # where imports may read local files by default
    drop.mkdir(parents=True, exist_ok=True)
    return make_ova(drop / f"{name}.ova", disk, name=name, cpu=1, memory_mb=256)


async def real_disk_on_vcsim(rt: Any, addr: str, conn: Any, vm_path: str, raw: Path, size_mib: int, offsets_mib: tuple[int, ...]) -> Any:
    """Put a real disk under a vcsim VM (its own disks are empty placeholders): `raw` gets
    random 4 KiB blocks at `offsets_mib`, goes up as a VMDK over the VM's first disk through
    the datastore's /folder PUT. The VM is powered off first (its files are read while it is
    stopped). Returns the VM's info."""
    import os
    import re

    import httpx

    from vmplane.services import vsphere as vs

    info = await rt.vsphere.vm_info(conn, vm_path)
    await rt.vsphere.power_off(conn, vm_path)
    subprocess.run(["qemu-img", "create", "-f", "raw", str(raw), f"{size_mib}M"], check=True, capture_output=True)
    with raw.open("r+b") as fh:
        for offset in offsets_mib:
            fh.seek(offset << 20)
            fh.write(os.urandom(4096))
    vmdk = raw.with_suffix(".vmdk")
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", str(raw), str(vmdk)], check=True, capture_output=True)
    ds, rel = re.match(r"^\[([^\]]+)\]\s*(.+)$", info.disks[0].file_path).groups()  # type: ignore[union-attr]

    def upload(si: Any) -> int:
        url = f"https://{addr}/folder/{rel}?dcPath=DC0&dsName={ds}"
        return httpx.put(url, content=vmdk.read_bytes(), headers={"Cookie": vs._cookie(si)}, verify=False).status_code

    assert vs._with_si(conn, await rt.outbound.policy(), upload) in (200, 201)
    return info
