"""Growing a guest's root filesystem after a disk grow (jobs/handlers/guest_fs): what the guest
answers is data, checked before it reaches an argv, and every way it cannot be done is said.

A simulated node whose guests answer from a script stands for the guest agent (the real thing
is in tests/e2e/test_qemu_restart.py and was checked by hand on Debian 12)."""

import dataclasses
from collections.abc import Callable
from typing import Any

from vmplane.drivers.base import ExecResult
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError
from vmplane.jobs.handlers.guest_fs import grow_root

Answer = Callable[[list[str]], ExecResult | None]


def ok(out: str = "", code: int = 0, err: str = "") -> ExecResult:
    return ExecResult(code, out.encode(), err.encode(), False, False, False, 5)


class ScriptedGuest(SimDriver):
    """A sim node with exec: `answer(argv)` is the guest's reply (None: no such program)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(hostname="scripted")
        self.capabilities = dataclasses.replace(self.capabilities, exec=True)
        self.answer = answer
        self.ran: list[list[str]] = []

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        self.ran.append(argv)
        reply = self.answer(argv)
        if reply is None:
            raise DriverError(f"guest-exec: Failed to execute child process {argv[0]!r} (No such file or directory)")
        return reply


def debian(argv: list[str]) -> ExecResult | None:
    return {"cat": ok("sysfs /sys sysfs rw 0 0\n/dev/vda2 / ext4 rw,relatime 0 0\n"), "growpart": ok("CHANGED: partition=2 start=524288 old: size=5 new: size=7\n"),
            "resize2fs": ok("The filesystem on /dev/vda2 is now 982144 (4k) blocks long.\n")}.get(argv[0])  # fmt: skip


async def test_growpart_then_resize2fs_each_an_argv() -> None:
    d = ScriptedGuest(debian)
    grown = await grow_root(d, "vm-1", 4)
    assert grown.grown and grown.message == "disk grown to 4 GiB; filesystem grown (/dev/vda2, ext4)"
    assert d.ran == [["cat", "/proc/mounts"], ["growpart", "/dev/vda", "2"], ["resize2fs", "/dev/vda2"]]


async def test_xfs_nvme_and_a_partition_already_full() -> None:
    # a root the kernel mounted itself shows as /dev/root: findmnt says which device it is
    answers = {"cat": ok("/dev/root / xfs rw 0 0\n"), "findmnt": ok("/dev/nvme0n1p1 xfs"), "growpart": ok("NOCHANGE: partition 1 is size 8. it cannot be grown", code=1), "xfs_growfs": ok()}
    d = ScriptedGuest(lambda argv: answers.get(argv[0]))
    assert (await grow_root(d, "vm-1", 8)).grown
    assert d.ran[2:] == [["growpart", "/dev/nvme0n1", "1"], ["xfs_growfs", "/"]]


async def test_busybox_guest_without_findmnt() -> None:
    d = ScriptedGuest(lambda argv: ok("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n/dev/vda /mnt/disk ext4 rw 0 0\n") if argv[0] == "cat" else None)
    grown = await grow_root(d, "vm-1", 3)
    assert not grown.grown
    assert grown.message == "disk grown to 3 GiB; filesystem not grown: the root filesystem is on 'rootfs', not on a disk partition vmplane can grow"
    assert [a[0] for a in d.ran] == ["cat", "findmnt"]


async def test_hostile_or_odd_answers_reach_no_command() -> None:
    for answer in ("/dev/vda1;reboot", "-rf", "/dev/../etc/passwd", "/dev/mapper/vg-root", "/dev/vda1\next4"):
        for findmnt in (f"{answer} ext4", "garbage"):
            d = ScriptedGuest(lambda argv, a=answer, f=findmnt: ok(f"{a} / ext4 rw 0 0\n") if argv[0] == "cat" else ok(f) if argv[0] == "findmnt" else ok())  # type: ignore[misc]
            grown = await grow_root(d, "vm-1", 3)
            assert not grown.grown and "filesystem not grown" in grown.message, answer
            assert [a[0] for a in d.ran if a[0] not in ("findmnt", "cat")] == [], (answer, d.ran)
    d = ScriptedGuest(lambda argv: ok("/dev/vda1 / btrfs rw 0 0") if argv[0] == "cat" else ok())
    assert (await grow_root(d, "vm-1", 3)).message.endswith("the root filesystem is 'btrfs'; vmplane grows ext2, ext3, ext4, xfs")


async def test_what_stops_it_is_said() -> None:
    no_growpart = ScriptedGuest(lambda argv: ok("/dev/vda1 / ext4 rw 0 0") if argv[0] == "cat" else None)
    message = (await grow_root(no_growpart, "vm-1", 5)).message
    assert message.startswith("disk grown to 5 GiB; filesystem not grown: growpart could not run in the guest (guest-exec: Failed"), message
    failing: dict[str, Any] = {"cat": ok("/dev/vda1 / ext4 rw 0 0"), "growpart": ok(code=2, err="FAILED: disk too small")}
    assert (await grow_root(ScriptedGuest(lambda argv: failing.get(argv[0], ok())), "vm-1", 5)).message.endswith("growpart failed: FAILED: disk too small")
    no_agent = ScriptedGuest(lambda argv: None)
    message = (await grow_root(no_agent, "vm-1", 5)).message
    assert message.startswith("disk grown to 5 GiB; filesystem not grown: the guest did not answer (guest-exec: ") and len(no_agent.ran) == 1
    sim = SimDriver(hostname="plain")  # no exec at all
    assert (await grow_root(sim, "vm-1", 5)).message == "disk grown to 5 GiB; filesystem not grown: the node cannot run commands in guests"
