"""What goes into a Debian cloud image (`vmplane image build debian-12`), as data.

A recipe is the suite, the package list, the files laid into the root tree and the builder's
version; its digest names the cached qcow2 (``<cache>/<digest>.qcow2``), so a changed recipe
builds a new image and an unchanged one is reused at once.  Nothing here runs a process:
:mod:`vmplane.images.debian` does the build.

The boot set-up: partition 1 is a FAT file system mounted on /boot in the guest, booted by
syslinux (installed on the FAT image file, no mount needed); partition 2 is the ext4 root,
made by ``mke2fs -d`` from the tree, last on the disk so cloud-init's growpart can grow it.
The kernel hook ``guest-debian-kernel-hook.sh`` rewrites /boot/syslinux.cfg to the newest
kernel whenever a kernel or an initrd is installed or removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

__all__ = [
    "BUILDER_VERSION",
    "RECIPES",
    "DebianRecipe",
    "host_mirror",
    "kernel_cmdline",
    "mmdebstrap_argv",
    "recipe_digest",
    "root_files",
]

#: Bumped whenever the builder changes what it makes from the same recipe.
BUILDER_VERSION = 1

#: Fixed ids: the kernel command line names the root by UUID, fstab names /boot by its label.
ROOT_UUID = "3b0f7d52-8c4e-4f1a-9d2b-6e5a1c0f9b87"
ROOT_LABEL = "vmplane-root"
BOOT_LABEL = "VMPLANEBOOT"
BOOT_VOLUME_ID = "7a1b2c3d"

HOOK_NAME = "zz-vmplane-syslinux"
HOOK_SOURCE = "guest-debian-kernel-hook.sh"
HOOK_PATHS = (
    f"etc/kernel/postinst.d/{HOOK_NAME}",
    f"etc/kernel/postrm.d/{HOOK_NAME}",
    f"etc/initramfs/post-update.d/{HOOK_NAME}",
)

#: Installed on top of mmdebstrap's minbase variant (recommends are not installed).
PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "systemd-resolved",
    "locales",
    "netbase",
    "cloud-init",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
    "openssh-server",
    "qemu-guest-agent",
    "sudo",
)

NETWORK_FILE = """\
# vmplane: DHCP on the first NIC whatever its name (ens3, enp0s3, eth0 ...).
# cloud-init's own network config, when it writes one, sorts first and wins.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

CLOUD_CFG = """\
# vmplane: the seed is a NoCloud (cidata) ISO; the login user is `debian` (sudo, key only).
datasource_list: [NoCloud, None]
# C.UTF-8 needs no locale-gen (slow under TCG)
locale: C.UTF-8
system_info:
  default_user:
    name: debian
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""


@dataclasses.dataclass(frozen=True)
class DebianRecipe:
    """One buildable image: its template name, Debian suite and packages."""

    name: str
    suite: str
    packages: tuple[str, ...] = PACKAGES
    os: str = "debian"
    login_user: str = "debian"


RECIPES: dict[str, DebianRecipe] = {
    "debian-12": DebianRecipe("debian-12", "bookworm"),
    "debian-13": DebianRecipe("debian-13", "trixie"),
}


def kernel_cmdline() -> str:
    """The guest kernel's command line: root by UUID, console on the serial port (last wins)."""
    return f"root=UUID={ROOT_UUID} ro console=tty0 console=ttyS0,115200 panic=-1"


def hook_script() -> bytes:
    """The kernel hook that regenerates /boot/syslinux.cfg (shipped with this package)."""
    return resources.files(__package__).joinpath(HOOK_SOURCE).read_bytes()


def root_files(recipe: DebianRecipe) -> dict[str, tuple[bytes, int]]:
    """The files laid into the root tree before the packages are installed: path (relative to
    /) -> (content, mode).  The kernel hook is among them, so the kernel's own installation
    runs it."""
    files: dict[str, tuple[bytes, int]] = {p: (hook_script(), 0o755) for p in HOOK_PATHS}
    files["etc/default/vmplane-syslinux"] = (f'KERNEL_CMDLINE="{kernel_cmdline()}"\n'.encode(), 0o644)
    files["etc/fstab"] = (
        f"UUID={ROOT_UUID} / ext4 defaults,errors=remount-ro 0 1\n"
        f"LABEL={BOOT_LABEL} /boot vfat defaults,umask=0022 0 2\n".encode(),
        0o644,
    )
    files["etc/systemd/network/90-vmplane-dhcp.network"] = (NETWORK_FILE.encode(), 0o644)
    files["etc/cloud/cloud.cfg.d/90-vmplane.cfg"] = (CLOUD_CFG.encode(), 0o644)
    return files


def recipe_digest(recipe: DebianRecipe) -> str:
    """A digest of everything that decides the image: suite, packages, files, hooks, builder version."""
    h = hashlib.sha256()
    h.update(json.dumps({"builder": BUILDER_VERSION, "suite": recipe.suite, "packages": sorted(recipe.packages), "cmdline": kernel_cmdline(), "hooks": CUSTOMIZE_HOOKS}, sort_keys=True).encode())
    for path, (content, mode) in sorted(root_files(recipe).items()):
        h.update(f"\0{path}\0{mode:o}\0".encode() + hashlib.sha256(content).digest())
    return h.hexdigest()


# Run inside mmdebstrap's customize phase ("$1" is the root tree): per-instance identity is
# left for first boot (cloud-init makes SSH host keys; systemd a machine id), the network and
# agent units are enabled, apt's lists dropped, and the kernel hook is run once more to check
# that it regenerates the bootloader config by itself.
CUSTOMIZE_HOOKS: tuple[str, ...] = (
    'echo debian > "$1/etc/hostname"',
    'chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service',
    'ln -sf ../run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
    'rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub',
    # the kernel's installation ran the hook (through initramfs-tools' post-update.d) ...
    'test -s "$1/boot/syslinux.cfg" || { echo "E: the kernel hook wrote no /boot/syslinux.cfg" >&2; exit 1; }',
    # ... and running it again on its own regenerates the same config
    'mv "$1/boot/syslinux.cfg" "$1/boot/syslinux.cfg.installed" && chroot "$1" /etc/kernel/postinst.d/' + HOOK_NAME,
    'cmp "$1/boot/syslinux.cfg" "$1/boot/syslinux.cfg.installed" && rm "$1/boot/syslinux.cfg.installed"',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log',
    ': > "$1/etc/machine-id"',
)


def mmdebstrap_argv(recipe: DebianRecipe, files_dir: Path, target: Path, mirror: str | None) -> list[str]:
    """The mmdebstrap command that builds ``recipe``'s root tree into the directory ``target``;
    ``files_dir`` holds :func:`root_files` laid out as a tree (copied in after the essential
    packages, before the rest: the kernel's installation runs the hook)."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--format=directory",
        "--components=main",
        "--include=" + ",".join(recipe.packages),
        "--essential-hook=sync-in " + str(files_dir) + " /",
    ]
    argv += [f"--customize-hook={hook}" for hook in CUSTOMIZE_HOOKS]
    argv += [recipe.suite, str(target)]
    if mirror:
        argv.append(mirror)
    return argv


_URI = re.compile(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", re.MULTILINE)


def host_mirror(apt_dir: Path = Path("/etc/apt")) -> str | None:
    """The Debian archive the host's apt uses (its first source that is not the security
    archive), so the guest comes from the same mirror; None when there is none."""
    texts = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    for text in texts:
        for uri in _URI.findall(text):
            if uri.startswith(("http://", "https://", "file:/")) and "security" not in uri:
                return uri
    return None
