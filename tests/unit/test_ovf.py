"""OVF descriptors: the VM's shape from what VMware, VirtualBox and HyperSDK write."""

import pytest

from vmplane.ovf import OvfError, parse_ovf, units

from ..imports_support import ovf_descriptor

VBOX = b"""<?xml version="1.0"?>
<Envelope ovf:version="2.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="box">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96"><Info>os</Info><Description>Debian_64</Description></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Connection>NAT</rasd:Connection><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Connection>Bridged</rasd:Connection><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceType>15</rasd:ResourceType></Item>
      <Item><rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>16</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"""


def test_a_vmware_style_descriptor_gives_the_vm_s_shape() -> None:
    ovf = parse_ovf(ovf_descriptor("web-1", 2, 4096, "web-1-disk1.vmdk", 12345, 20, ("VM Network", "Backend")).encode())
    assert (ovf.name, ovf.cpu, ovf.memory_mb, ovf.cdroms, ovf.os) == ("web-1", 2, 4096, 1, "Other Linux (64-bit)")
    assert [(d.disk_id, d.href, d.capacity_bytes, d.file_size) for d in ovf.disks] == [("vmdisk1", "web-1-disk1.vmdk", 20 << 30, 12345)]
    assert "streamOptimized" in ovf.disks[0].format
    assert [(n.network, n.model) for n in ovf.nics] == [("VM Network", "VmxNet3"), ("Backend", "VmxNet3")]


def test_an_ovf_2_descriptor_with_named_units_and_bytes() -> None:
    ovf = parse_ovf(VBOX)
    assert ovf.firmware == "bios"
    efi = VBOX.replace(b"</VirtualHardwareSection>", b'<vmw:Config xmlns:vmw="http://www.vmware.com/schema/ovf" ovf:required="false" vmw:key="firmware" vmw:value="efi"/></VirtualHardwareSection>')
    assert parse_ovf(efi).firmware == "efi"
    assert (ovf.name, ovf.cpu, ovf.memory_mb, ovf.cdroms, ovf.os) == ("box", 4, 2048, 2, "Debian_64")
    assert ovf.disks[0].capacity_bytes == 10 << 30 and ovf.disks[0].file_size is None
    assert [n.network for n in ovf.nics] == ["NAT", "Bridged"]


@pytest.mark.parametrize(
    ("text", "factor"),
    [("byte", 1), ("byte * 2^20", 1 << 20), ("byte * 2^30", 1 << 30), ("byte * 1024", 1024), ("MegaBytes", 1 << 20), ("GigaBytes", 1 << 30), (None, 7)],
)
def test_allocation_units(text: str | None, factor: int) -> None:
    assert units(text, 7) == factor


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: s.replace("<rasd:ResourceType>3</rasd:ResourceType>", "<rasd:ResourceType>99</rasd:ResourceType>"), "no CPU count"),
        (lambda s: s.replace("<rasd:ResourceType>4</rasd:ResourceType>", "<rasd:ResourceType>98</rasd:ResourceType>"), "no memory size"),
        (lambda s: s.replace('ovf:fileRef="file1"', 'ovf:fileRef="nope"'), "names no file"),
        (lambda s: s.replace("ovf:/disk/vmdisk1", "ovf:/disk/other"), "does not have"),
        (lambda s: s.replace('ovf:capacity="20"', 'ovf:capacity="lots"'), "not a whole number"),
        (lambda s: s.replace('byte * 2^30', 'furlongs'), "unknown allocation unit"),
        (lambda s: s.replace("<VirtualSystem ", "<Other ").replace("</VirtualSystem>", "</Other>"), "no VirtualSystem"),
        (lambda s: s.replace("</Envelope>", ""), "not well-formed"),
        (lambda s: s.replace("<Envelope", '<!DOCTYPE x [<!ENTITY a "aaaa">]><Envelope'), "DOCTYPE"),
        (lambda s: s.replace("<Envelope", "<Package").replace("</Envelope>", "</Package>"), "not an OVF Envelope"),
    ],
)
def test_bad_descriptors_say_what_is_wrong(mutate: object, problem: str) -> None:
    text = ovf_descriptor("vm", 1, 512, "vm.vmdk", 1, 20)
    with pytest.raises(OvfError, match=problem):
        parse_ovf(mutate(text).encode())  # type: ignore[operator]
