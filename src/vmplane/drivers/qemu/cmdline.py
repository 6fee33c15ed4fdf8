"""QEMU's command line for a VM: a pure function from the stored configuration to argv.

QEMU runs with the VM directory as its working directory, so sockets and logs are named
relative to it (unix socket paths are limited to 107 bytes); the disk and the pidfile are
absolute, which also puts the VM directory into the process's command line (the driver
recognises its processes by it).
"""

from ...pci import check_address
from .layout import VmConfig, VmPaths

GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
DISK_ID = "disk0"
"""The disk's block backend name: `block_resize` and `query-blockstats` use it."""

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's seccomp filter allows by default and denies these groups of syscalls (set*id,
fork/exec/clone of processes, sched_setaffinity and friends, obsolete calls). VFIO needs none
of them (open, ioctl, mmap, eventfd on /dev/vfio), so passthrough works under it."""


def opt(value: str) -> str:
    """A value safe inside a QEMU `key=value,...` option (commas are doubled)."""
    return value.replace(",", ",,")


def build_argv(
    config: VmConfig,
    paths: VmPaths,
    *,
    accel: str,
    qemu_binary: str = "qemu-system-x86_64",
    forward_address: str = "127.0.0.1",
    sandbox: bool = True,
) -> list[str]:
    """argv that runs `config` (no shell: every element is one argument).

    The guest may reboot (no `-no-reboot`); a guest power-off leaves QEMU paused in the
    `shutdown` state (`-no-shutdown`) so the driver can tell it from a crash.
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, not {accel!r}")
    r = config.resources
    argv = [
        qemu_binary,
        "-name", f"guest={config.id},debug-threads=on",
        "-uuid", config.uuid,
        "-machine", "pc",
        "-accel", accel,
    ]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    argv += [
        "-m", str(r.ram_mb),
        "-smp", str(r.cpu),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-shutdown",
    ]
    if sandbox:
        argv += ["-sandbox", SANDBOX]
    if config.boot is not None:
        argv += ["-kernel", config.boot.kernel]
        if config.boot.initrd:
            argv += ["-initrd", config.boot.initrd]
        if config.boot.cmdline:
            argv += ["-append", config.boot.cmdline]
    argv += [
        # the disk: a qcow2 overlay on the template's base image
        "-drive", f"file={opt(str(paths.disk))},if=none,id={DISK_ID},format=qcow2,discard=unmap",
        # (with -kernel the linuxboot option ROM boots first; else the BIOS boots this disk)
        "-device", f"virtio-blk-pci,drive={DISK_ID},id=vda" + ("" if config.boot else ",bootindex=1"),
        # the NoCloud seed: ide-cd on the i440fx IDE controller (the q35 AHCI -cdrom is not
        # readable by kernels without an AHCI driver)
        "-drive", f"file={paths.seed.name},if=none,id=seed0,format=raw,readonly=on,media=cdrom",
        "-device", "ide-cd,drive=seed0,bus=ide.1,unit=0",
        # user-mode networking, with host ports forwarded to the guest
        "-netdev", ",".join(["user,id=n0", *(
            f"hostfwd={f.protocol}:{forward_address}:{f.host_port}-:{f.guest_port}" for f in config.forwards
        )]),
        "-device", f"virtio-net-pci,netdev=n0,mac={config.mac},romfile=",
        "-device", "virtio-rng-pci",
        # qemu-guest-agent on virtio-serial
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={paths.qga.name},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
        # serial console: a socket for interactive use, everything also logged to a file
        "-chardev", f"socket,id=ser0,path={paths.serial.name},server=on,wait=off,"
        f"logfile={paths.serial_log.name},logappend=on",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{paths.qmp.name},server=on,wait=off",
        "-pidfile", str(paths.pidfile),
    ]
    # host PCI devices (VFIO), bound to vfio-pci by the driver before QEMU starts
    for i, address in enumerate(config.pci_devices):
        argv += ["-device", f"vfio-pci,host={check_address(address)},id=hostpci{i}"]
    return argv
