"""The power actions a VM takes: the job type each runs as and the states it may start from.
VmService.power refuses an action from any other state; the vm-power handler checks again
when the task runs (the VM may have moved on meanwhile)."""

from ..domain import VmStatus

POWER_ACTIONS: dict[str, tuple[str, frozenset[VmStatus]]] = {
    # action: (job type, states it may start from)
    "start": ("vm-start", frozenset({VmStatus.STOPPED, VmStatus.ERROR, VmStatus.UNKNOWN})),
    "stop": ("vm-stop", frozenset({VmStatus.RUNNING, VmStatus.STARTING, VmStatus.STOPPING, VmStatus.REBOOTING, VmStatus.ERROR, VmStatus.UNKNOWN})),
    "shutdown": ("vm-shutdown", frozenset({VmStatus.RUNNING})),
    "reboot": ("vm-reboot", frozenset({VmStatus.RUNNING})),
    "power-cycle": ("vm-power-cycle", frozenset({VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.ERROR, VmStatus.UNKNOWN})),
}
