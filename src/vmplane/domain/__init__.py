"""The domain floor: states, value objects and typed records every layer shares. No I/O here,
and no import of anything above it.

- `core`: VM, job, task and node states; `Resources`; `VmSpec` (what a driver defines a VM from)
- `network`: networks, a node's view of NICs, the firewall model and its validation
- `spec`: `StoredSpec`, a VM's stored spec with every key declared, and its parts
- `records`: `Vm`, `Template` and `Iso`, the records the store returns
- `requests`: what a caller asks the core to make: `NewVm`, `ImportRequest` (and its source)
- `ingress`: IPv6 ingress policies, read from and written into the firewall
- `vsphere`: a vCenter connection and the facts read from it (imported from `domain.vsphere`)
"""

from .core import (
    BOOT_DEVICES,
    DEFAULT_BOOT_ORDER,
    DEFAULT_RESOURCES,
    FIRMWARES,
    JOB_FINAL,
    QUOTA_FIELDS,
    TASK_FINAL,
    BootSetup,
    JobState,
    NodeStatus,
    Resources,
    TaskState,
    VmSpec,
    VmStatus,
    job_final_state,
    job_progress,
)
from .network import Firewall, Nic
from .records import Iso, Template, Vm
from .requests import ImportRequest, ImportSource, NewVm
from .spec import CloudInit, Expose, Imported, PluginRef, SshForward, StoredSpec, VmNic

__all__ = [
    "BOOT_DEVICES", "DEFAULT_BOOT_ORDER", "FIRMWARES", "BootSetup", "DEFAULT_RESOURCES", "JOB_FINAL", "QUOTA_FIELDS", "TASK_FINAL", "CloudInit", "Expose", "Firewall", "Imported",
    "ImportRequest", "ImportSource", "JobState", "NewVm", "Nic", "NodeStatus", "PluginRef", "Resources", "SshForward",
    "Iso", "StoredSpec", "TaskState", "Template", "Vm", "VmNic", "VmSpec", "VmStatus", "job_final_state", "job_progress",
]  # fmt: skip
