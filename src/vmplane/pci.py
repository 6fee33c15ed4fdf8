"""PCI passthrough (VFIO): host device discovery from sysfs, the allowlist, and binding
devices to / from `vfio-pci`. The sysfs root is a parameter so tests run on a fake tree."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PciDevice:
    address: str
    """domain:bus:device.function, e.g. 0000:01:00.0"""
    vendor: str
    """4 lower-case hex digits, e.g. 10de"""
    device: str
    class_code: str
    """6 hex digits, e.g. 030000"""
    driver: str | None
    iommu_group: int | None
    numa_node: int | None

    @property
    def model(self) -> str:
        """vendor:device, e.g. 10de:2204"""
        return f"{self.vendor}:{self.device}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.address, "vendor": self.vendor, "device": self.device, "model": self.model,
            "classCode": self.class_code, "driver": self.driver, "iommuGroup": self.iommu_group, "numaNode": self.numa_node,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "PciDevice":
        return cls(d["address"], d["vendor"], d["device"], d["classCode"], d.get("driver"), d.get("iommuGroup"), d.get("numaNode"))
