"""QEMU's command line for a VM: a pure function from the stored configuration to argv.

QEMU runs with the VM directory as its working directory, so sockets and logs are named
relative to it (unix socket paths are limited to 107 bytes); the disk and the pidfile are
absolute, which also puts the VM directory into the process's command line (the driver
recognises its processes by it).
"""

import ipaddress
import re

from ...domain.network import allowed_forwards, tap_name
from ...errors import DriverError
from ...pci import check_address
from .layout import Forward, VmConfig, VmPaths

GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
DISK_ID = "disk0"
"""The disk's block backend name: `block_resize` and `query-blockstats` use it."""
CDROM_ID = "cdrom0"
"""the CD-ROM device (qdev id): QMP's blockdev-change-medium and eject name it"""
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
"""Debian's `ovmf` (scripts/install-qemu.sh): UEFI firmware without Secure Boot, and the
template of the variable store each UEFI VM gets a copy of (`VmPaths.nvram`)"""
VGA_ID = "vga0"
"""The graphical console's display adapter: the standard VGA (`-device VGA`), which every
PC guest drives (BIOS text mode, vgacon, installers, Windows); `virtio-vga` would need a
guest driver (the tiny guest's cloud kernel has none), so it is not offered."""
BALLOON_ID = "balloon0"
"""The virtio-balloon device (never inflated): its `guest-stats` are the guest's memory figures."""

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
"""QEMU's seccomp filter allows by default and denies these groups of syscalls (set*id,
fork/exec/clone of processes, sched_setaffinity and friends, obsolete calls). VFIO needs none
of them (open, ioctl, mmap, eventfd on /dev/vfio), so passthrough works under it."""
SANDBOX_RUNAS = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"
"""The filter of a QEMU that drops to another user with `-runas`: QEMU 7.2 installs the filter
before it drops, so `elevateprivileges=deny` kills it at its own setgid/setuid ("Bad system
call", measured). Once dropped it has no capabilities and all four uids are the user's, so
set*id can no longer raise anything; exec of a setuid binary stays denied (spawn=deny)."""


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
    runas: str | None = None,
) -> list[str]:
    """argv that runs `config` (no shell: every element is one argument).

    The guest may reboot (no `-no-reboot`); a guest power-off leaves QEMU paused in the
    `shutdown` state (`-no-shutdown`) so the driver can tell it from a crash. `runas`: the
    user QEMU becomes once it has opened its files (see `confine`).
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
        argv += ["-sandbox", SANDBOX_RUNAS if runas else SANDBOX]
    if runas:
        argv += ["-runas", runas]
    if config.boot_setup.firmware == "uefi":
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,file={opt(OVMF_CODE)},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={opt(str(paths.nvram))}",
        ]  # fmt: skip
    if config.boot is not None:
        argv += ["-kernel", config.boot.kernel]
        if config.boot.initrd:
            argv += ["-initrd", config.boot.initrd]
        if config.boot.cmdline:
            argv += ["-append", config.boot.cmdline]
    argv += [
        # the disk: a qcow2 overlay on the template's base image. Opened read-write at start
        # (auto-read-only=off): -drive's default opens it read-only while nothing writes (a
        # migration target) and re-opens it by path when a writer comes, which a QEMU that
        # dropped privileges (-runas) may no longer do
        "-drive", f"file={opt(str(paths.disk))},if=none,id={DISK_ID},format=qcow2,discard=unmap,auto-read-only=off",
        # (with -kernel the linuxboot option ROM boots first; else the firmware boots the disk
        # and the CD-ROM in the VM's boot order)
        "-device", f"virtio-blk-pci,drive={DISK_ID},id=vda" + ("" if config.boot else f",bootindex={boot_index(config, 'disk')}"),
        # the NoCloud seed: ide-cd on the i440fx IDE controller (the q35 AHCI -cdrom is not
        # readable by kernels without an AHCI driver)
        "-drive", f"file={paths.seed.name},if=none,id=seed0,format=raw,readonly=on,media=cdrom",
        "-device", "ide-cd,drive=seed0,bus=ide.1,unit=0",
        *cdrom_args(config),
        # the NICs: user-mode (host ports forwarded to the guest) or taps on bridges
        *net_args(config, forward_address),
        "-device", "virtio-rng-pci",
        # qemu-guest-agent on virtio-serial
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=qga0,path={paths.qga.name},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
        # virtio-balloon, never inflated: the guest's own memory figures (QMP guest-stats);
        # after the devices VMs had before it, so their PCI slots stay where they were
        "-device", f"virtio-balloon-pci,id={BALLOON_ID}",
        # serial console: a socket for interactive use, everything also logged to a file
        "-chardev", f"socket,id=ser0,path={paths.serial.name},server=on,wait=off,"
        f"logfile={paths.serial_log.name},logappend=on",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{paths.qmp.name},server=on,wait=off",
        # the graphical console: a VGA adapter (after the devices VMs had before it, so their
        # PCI slots stay) and QEMU's VNC server on a unix socket in the VM's directory, never a
        # TCP port; no password: only vmplane (root or its user, umask 0o077) can connect
        "-device", f"VGA,id={VGA_ID}",
        "-vnc", f"unix:{paths.vnc.name}",
        "-pidfile", str(paths.pidfile),
    ]
    # host PCI devices (VFIO), bound to vfio-pci by the driver before QEMU starts
    for i, address in enumerate(config.pci_devices):
        argv += ["-device", f"vfio-pci,host={check_address(address)},id=hostpci{i}"]
    return argv


def boot_index(config: VmConfig, device: str) -> int:
    """The device's place in the VM's boot order (1 first); one past the end when it is not
    named (a VM from before boot orders boots its disk first)."""
    order = config.boot_setup.order if config.cdrom_drive else ("disk",)
    return order.index(device) + 1 if device in order else len(order) + 1


def cdrom_args(config: VmConfig) -> list[str]:
    """The CD-ROM (on the IDE controller's secondary slave: the seed stays the first CD-ROM the
    guest sees) with the VM's ISO, read-only, or empty; none for VMs defined before issue 24."""
    if not config.cdrom_drive:
        return []
    iso = config.boot_setup.cdrom
    medium = f"file={opt(iso)},format=raw," if iso else ""
    return [
        "-drive", f"{medium}if=none,id=cd0,media=cdrom,readonly=on",
        "-device", f"ide-cd,drive=cd0,bus=ide.1,unit=1,id={CDROM_ID}" + ("" if config.boot else f",bootindex={boot_index(config, 'cdrom')}"),
    ]  # fmt: skip


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def net_args(config: VmConfig, forward_address: str) -> list[str]:
    """-netdev/-device pairs, one per NIC (netdev `n<index>`). A user-mode NIC is QEMU's slirp
    on the network's subnet, the node at its gateway, handing the guest exactly the NIC's
    address by DHCP; the first one carries the forwarded ports the firewall admits. A bridge
    NIC is the tap `tap_name(vm, index)` the driver created and enslaved beforehand."""
    forwards = [f"hostfwd={hostfwd_rule(f, forward_address)}" for f in active_forwards(config, forward_address)]
    if not config.nics:
        return ["-netdev", ",".join(["user,id=n0", *forwards]), "-device", f"virtio-net-pci,netdev=n0,mac={_mac(config.mac)},romfile="]
    argv: list[str] = []
    first_user = user_netdev(config)
    for i, nic in enumerate(config.nics):
        netdev = f"n{i}"
        if nic.network.type == "user":
            subnet = ipaddress.IPv4Network(nic.network.subnet)
            host, ip = ipaddress.IPv4Address(nic.network.gateway), ipaddress.IPv4Address(nic.ip)
            if host not in subnet or ip not in subnet:
                raise DriverError(f"NIC {i} of {config.id}: {ip} or gateway {host} is outside {subnet}", vm_id=config.id)
            parts = [f"user,id={netdev}", f"net={subnet}", f"host={host}", f"dhcpstart={ip}"]
            if netdev == first_user:
                parts += forwards
            argv += ["-netdev", ",".join(parts)]
        elif nic.network.type == "bridge":
            argv += ["-netdev", f"tap,id={netdev},ifname={tap_name(config.id, i)},script=no,downscript=no"]
        else:
            raise DriverError(f"NIC {i} of {config.id} is on a {nic.network.type!r} network", vm_id=config.id)
        argv += ["-device", f"virtio-net-pci,netdev={netdev},mac={_mac(nic.mac)},romfile="]
    return argv


def user_netdev(config: VmConfig) -> str | None:
    """The netdev that carries the forwarded ports: the first user-mode NIC (None: there is
    none, the VM's NICs are all on bridges)."""
    if not config.nics:
        return "n0"
    return next((f"n{i}" for i, nic in enumerate(config.nics) if nic.network.type == "user"), None)


def active_forwards(config: VmConfig, forward_address: str) -> tuple[Forward, ...]:
    """The forwarded ports the VM's firewall lets in (all of them while it is disabled)."""
    if user_netdev(config) is None:
        return ()
    # forwarded ports listen on forward_address: that is where their connections come from
    # (on 0.0.0.0 from anywhere: then rules naming a source never admit them)
    listen = ipaddress.ip_address(forward_address)
    source = None if listen.is_unspecified else str(listen)
    allowed = allowed_forwards(config.firewall, [(f.protocol, f.guest_port) for f in config.forwards], source)  # type: ignore[arg-type]
    return tuple(f for f in config.forwards if (f.protocol, f.guest_port) in allowed)


def hostfwd_rule(f: Forward, forward_address: str) -> str:
    """`tcp:127.0.0.1:20000-:22`, as -netdev user,hostfwd= and HMP hostfwd_add take it."""
    if f.protocol not in ("tcp", "udp"):
        raise DriverError(f"forward protocol {f.protocol!r} is not tcp or udp")
    return f"{f.protocol}:{ipaddress.ip_address(forward_address)}:{int(f.host_port)}-:{int(f.guest_port)}"


def _mac(mac: str) -> str:
    if not _MAC.match(mac):
        raise DriverError(f"{mac!r} is not a MAC address")
    return mac
