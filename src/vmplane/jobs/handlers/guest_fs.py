"""Growing a running guest's root partition and filesystem after its disk grew (vm-update).

Through the guest agent (`HypervisorDriver.exec_vm`, no shell): the guest says where its root
filesystem is (/proc/mounts, or `findmnt` where that names no device); `growpart DISK PART` grows that partition to the
disk's end, then `resize2fs DEVICE` (ext2/3/4) or `xfs_growfs /` grows the filesystem. The
guest's answers are data: the device must match `ROOT_DEVICE` (a virtio, SCSI, Xen or NVMe
disk or one of its partitions) and the filesystem be one named in `GROWERS` before anything
is run with them, each as one argv element. Any other case is said, not guessed at.
"""

import re
from dataclasses import dataclass

from ...drivers.base import ExecResult, HypervisorDriver
from ...errors import VmplaneError

ROOT_DEVICE = re.compile(r"^/dev/(?P<disk>(?:[sv]d|xvd)[a-z]{1,2}|nvme[0-9]{1,3}n[0-9]{1,3})(?:p?(?P<part>[0-9]{1,3}))?$")
"""a whole disk or a partition: /dev/vda, /dev/vda1, /dev/sdb2, /dev/nvme0n1p1"""
GROWERS = {"ext2": "resize2fs", "ext3": "resize2fs", "ext4": "resize2fs", "xfs": "xfs_growfs"}
TIMEOUT = 60.0
MAX_OUTPUT = 64 << 10


@dataclass(frozen=True, slots=True)
class Grown:
    grown: bool
    message: str
    """what happened, as the job's log and the VM's event say it"""


class _NotGrown(Exception):
    pass


async def _run(driver: HypervisorDriver, vm_id: str, argv: list[str]) -> ExecResult:
    try:
        return await driver.exec_vm(vm_id, argv, TIMEOUT, MAX_OUTPUT)
    except VmplaneError as exc:  # no agent, no such program in the guest, the VM stopped meanwhile
        raise _NotGrown(f"{argv[0]} could not run in the guest ({exc.message})") from None


def _said(r: ExecResult) -> str:
    text = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
    return text[-1][:200] if text else f"exit status {r.exit_code}"


async def root_filesystem(driver: HypervisorDriver, vm_id: str) -> tuple[str, str]:
    """(device, filesystem type) of the guest's `/`, as the guest says it: its mount table,
    or `findmnt` where that names no device (`/dev/root`: a root the kernel mounted itself)."""
    try:
        mounts = await driver.exec_vm(vm_id, ["cat", "/proc/mounts"], TIMEOUT, MAX_OUTPUT)
    except VmplaneError as exc:  # no agent (or not yet), or the VM stopped meanwhile
        raise _NotGrown(f"the guest did not answer ({exc.message})") from None
    root = [line.split() for line in mounts.stdout.decode(errors="replace").splitlines() if line.split()[1:2] == ["/"]]
    if mounts.exit_code != 0 or not root or len(root[-1]) < 3:
        raise _NotGrown("the guest did not say where its root filesystem is")
    device, fstype = root[-1][0], root[-1][2]
    if ROOT_DEVICE.match(device) is None:
        try:
            r = await driver.exec_vm(vm_id, ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/"], TIMEOUT, MAX_OUTPUT)
        except VmplaneError:
            return device, fstype  # no findmnt (busybox guests): the mount table's answer stands
        if r.exit_code == 0 and len(words := r.stdout.decode(errors="replace").split()) == 2:
            return words[0], words[1]
    return device, fstype


async def grow_root(driver: HypervisorDriver, vm_id: str, disk_gb: int) -> Grown:
    """Grow the running guest's root partition and filesystem to its disk (`disk_gb`)."""
    head = f"disk grown to {disk_gb} GiB"
    if not driver.capabilities.exec:
        return Grown(False, f"{head}; filesystem not grown: the node cannot run commands in guests")
    try:
        device, fstype = await root_filesystem(driver, vm_id)
        match = ROOT_DEVICE.match(device)
        if match is None:
            raise _NotGrown(f"the root filesystem is on {device[:64]!r}, not on a disk partition vmplane can grow")
        grower = GROWERS.get(fstype)
        if grower is None:
            raise _NotGrown(f"the root filesystem is {fstype[:32]!r}; vmplane grows {', '.join(sorted(GROWERS))}")
        if match["part"] is not None:
            r = await _run(driver, vm_id, ["growpart", f"/dev/{match['disk']}", match["part"]])
            if r.exit_code not in (0, 1) or (r.exit_code == 1 and b"NOCHANGE" not in r.stdout + r.stderr):
                raise _NotGrown(f"growpart failed: {_said(r)}")
        r = await _run(driver, vm_id, [grower, "/" if grower == "xfs_growfs" else device])
        if r.exit_code != 0:
            raise _NotGrown(f"{grower} failed: {_said(r)}")
    except _NotGrown as exc:
        return Grown(False, f"{head}; filesystem not grown: {exc}")
    return Grown(True, f"{head}; filesystem grown ({device}, {fstype})")
