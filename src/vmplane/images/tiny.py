"""Build the "tiny" guest image: Debian cloud kernel + busybox initramfs.

The guest boots in a few seconds under TCG and offers what the control plane
needs from a VM: a serial console with a root shell, a root shell on the VGA
console (tty1, what the graphical console shows), qemu-guest-agent on
virtio-serial, dropbear SSH on port 22, DHCP on eth0, ACPI power button
handling and a small NoCloud (``cidata``) implementation.  See
``guest-init.sh`` (the guest's /init) for the guest side.

Everything comes from Debian packages fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into a scratch directory (nothing is installed
on the host).  Host tools needed: apt-get, apt-cache, dpkg-deb, qemu-img and,
preferably, mkfs.ext4 (``scripts/install-qemu.sh`` installs them); the
extracted busybox is used for ``cpio`` and as a fallback ``mke2fs``.

Result, in ``dest_dir``::

    vmlinuz         the kernel
    initrd.img      gzip'd newc cpio, < 10 MB
    disk.qcow2      1 GiB qcow2 base disk holding an empty ext4 filesystem
                    (the guest mounts it on /mnt/disk and keeps its
                    once-per-instance markers there); give each VM a qcow2
                    overlay on it.  A blank disk (``qemu-img create``) works
                    too, the guest then simply has no persistence.
    manifest.json   package versions, cmdline, written last

Boot with ``-kernel vmlinuz -initrd initrd.img -append <cmdline>``; the guest
prints ``vmplane-tiny: boot complete`` (:data:`BOOT_COMPLETE_LINE`) on the
serial console once it is ready.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BOOT_COMPLETE_LINE",
    "DEFAULT_CMDLINE",
    "INIT_START_LINE",
    "ImageBuildError",
    "TinyImage",
    "build_tiny_image",
    "load_tiny_image",
    "recipe_digest",
    "tiny_dir",
]

#: Kernel command line for the tiny image: kernel messages on the VGA console (tty0) and the
#: serial port; the last one, ttyS0, is /dev/console (where init and its markers write).
DEFAULT_CMDLINE = "console=tty0 console=ttyS0 quiet panic=-1"
#: Printed on the serial console first thing by the guest's /init.
INIT_START_LINE = "vmplane-tiny: init starting"
#: Printed on the serial console when the guest is fully up.
BOOT_COMPLETE_LINE = "vmplane-tiny: boot complete"

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
DISK_NAME = "disk.qcow2"
MANIFEST_NAME = "manifest.json"

#: Bumped whenever the produced image changes in a way callers may care about.
IMAGE_FORMAT_VERSION = 3
# 2: no host key baked in: each guest makes its own at first boot (per instance-id) and prints
#    it on the console, where vmplane's readiness records it for `vmplane vm ssh` to pin
# 3: kernel messages on the VGA console too, and a root shell on tty1 (the graphical console)

DISK_SIZE = 1 << 30  # virtual size of the base disk
DISK_LABEL = "vmplane-disk"
# Fixed ids keep the base disk stable between builds.
DISK_UUID = "6f1c8a2e-5d3b-4c7a-9e0f-2a4b6c8d0e1f"
# Date the initramfs and filesystem claim for their files (2023-11-14).
SOURCE_DATE_EPOCH = 1_700_000_000

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"
DROPBEAR_PACKAGE = "dropbear-bin"

#: Modules to load, in this order (dependencies are inserted before their
#: users automatically).  The virtio order is the one that works for the
#: Debian cloud kernel; virtio-rng early so dropbear does not wait for entropy.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_rng",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",  # the guest's memory figures for vmplane's stats (never inflated)
    "button",
    "evdev",
    # NoCloud seed on a cdrom: IDE (i440fx "pc" machine), virtio-scsi, or a
    # virtio-blk disk.  The cloud kernel has no AHCI driver, so a q35 -cdrom
    # is not readable: attach the seed as virtio-blk or scsi-cd instead.
    "libata",
    "ata_piix",
    "ata_generic",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "isofs",
)

# ext4 feature list that every e2fsprogs >= 1.43 knows and kernel 6.1 mounts,
# so the disk does not depend on the host's mke2fs.conf defaults.
_MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

ProgressFn = Callable[[int, str], None]


class ImageBuildError(Exception):
    """The tiny image could not be built; ``step`` names the failed stage."""

    def __init__(self, step: str, message: str, stderr: str = "") -> None:
        self.step = step
        self.message = message
        self.stderr = stderr
        text = f"tiny image build failed at step {step!r}: {message}"
        if stderr.strip():
            text += "\n--- stderr ---\n" + stderr.strip()[-4000:]
        super().__init__(text)


@dataclasses.dataclass(frozen=True)
class TinyImage:
    """A built tiny image.  ``disk`` is a qcow2 base: use overlays on it."""

    kernel: Path
    initrd: Path
    disk: Path
    cmdline: str
    ssh_host_key: str | None = None
    """a host key every guest of the image shared (format 1 only; from format 2 on each guest
    makes its own at first boot and prints it on its console: None)"""


# --------------------------------------------------------------------------
# public entry points


GUEST_FILES = ("guest-init.sh", "guest-udhcpc.sh", "guest-shutdown.sh", "guest-acpi-power.sh", "guest-profile")


def recipe_digest() -> str:
    """A digest of what decides the image's contents (guest scripts, kernel modules, format version).

    Builds go into a directory named after it (`tiny_dir`), so a changed recipe builds a
    new image beside the old one, whose disk older VMs' overlays still use."""
    h = hashlib.sha256(f"format={IMAGE_FORMAT_VERSION}\n".encode())
    h.update(f"modules={','.join(GUEST_MODULES)}\n".encode())
    guest = resources.files(__package__)
    for name in GUEST_FILES:
        h.update(name.encode() + b"\0" + guest.joinpath(name).read_bytes())
    return h.hexdigest()


def tiny_dir(cache_root: Path) -> Path:
    """Where the current recipe's image lives inside an image cache."""
    return Path(cache_root) / f"tiny-{recipe_digest()[:12]}"


def load_tiny_image(dest_dir: Path) -> TinyImage | None:
    """Return the image already built in ``dest_dir``, or None."""
    dest_dir = Path(dest_dir)
    paths = [dest_dir / n for n in (KERNEL_NAME, INITRD_NAME, DISK_NAME, MANIFEST_NAME)]
    if not all(p.is_file() for p in paths):
        return None
    try:
        manifest = json.loads((dest_dir / MANIFEST_NAME).read_text())
        cmdline = str(manifest.get("cmdline") or DEFAULT_CMDLINE)
        host_key = manifest.get("ssh_host_key")
    except (OSError, ValueError):
        return None
    return TinyImage(
        kernel=dest_dir / KERNEL_NAME,
        initrd=dest_dir / INITRD_NAME,
        disk=dest_dir / DISK_NAME,
        cmdline=cmdline,
        ssh_host_key=host_key if isinstance(host_key, str) and host_key.startswith("ssh-") else None,
    )


def build_tiny_image(
    dest_dir: Path,
    progress: Callable[[int, str], None] | None = None,
) -> TinyImage:
    """Build (or reuse) the tiny image in ``dest_dir``.

    Returns at once if ``dest_dir`` already holds a complete image.  Otherwise
    builds in a temporary directory beside ``dest_dir`` and moves the files
    into place at the end (``manifest.json`` last, it marks completion).
    Concurrent callers for the same ``dest_dir`` are serialised by a lock
    file.  ``progress(percent, message)`` is called at every stage.  Raises
    :class:`ImageBuildError` on failure.
    """
    dest_dir = Path(dest_dir).absolute()

    def report(pct: int, msg: str) -> None:
        if progress is not None:
            progress(pct, msg)

    existing = load_tiny_image(dest_dir)
    if existing is not None:
        report(100, f"tiny image already built in {dest_dir}")
        return existing

    try:
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError("prepare", f"cannot create {dest_dir.parent}: {exc}") from exc
    lock_path = dest_dir.parent / f".{dest_dir.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = load_tiny_image(dest_dir)
        if existing is not None:
            report(100, f"tiny image already built in {dest_dir}")
            return existing
        out = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.build-", dir=dest_dir.parent))
        try:
            with tempfile.TemporaryDirectory(prefix="vmplane-tiny-") as scratch:
                manifest = _Builder(Path(scratch), out, report).build()
            _install(out, dest_dir, manifest)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    image = load_tiny_image(dest_dir)
    if image is None:  # pragma: no cover - _install guarantees the files
        raise ImageBuildError("install", f"image files missing in {dest_dir} after build")
    report(100, f"tiny image ready in {dest_dir}")
    return image


def _install(out: Path, dest_dir: Path, manifest: dict[str, Any]) -> None:
    """Move the finished files from ``out`` to ``dest_dir``, manifest last."""
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    try:
        if not dest_dir.exists():
            os.chmod(out, 0o700)  # private, as mkdtemp made it (see docs/security.md: the image cache)
            os.rename(out, dest_dir)
            out.mkdir()  # so the caller's cleanup has something to remove
            return
        (dest_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for name in (KERNEL_NAME, INITRD_NAME, DISK_NAME, MANIFEST_NAME):
            os.replace(out / name, dest_dir / name)
    except OSError as exc:
        raise ImageBuildError("install", f"cannot move image into {dest_dir}: {exc}") from exc


# --------------------------------------------------------------------------
# helpers


def _run(
    step: str,
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    stdout: IO[bytes] | int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C"
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=stdin,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    except OSError as exc:
        raise ImageBuildError(step, f"cannot run {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise ImageBuildError(
            step,
            f"{' '.join(args)} exited with status {proc.returncode}",
            proc.stderr.decode(errors="replace"),
        )
    return proc


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _need_tool(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ImageBuildError(
            "host tools",
            f"{name!r} not found on the host; run scripts/install-qemu.sh "
            "(apt-get install qemu-utils e2fsprogs)",
        )
    return found


def _elf_sections(data: bytes) -> dict[str, tuple[int, int, int, int]]:
    """Map section name -> (type, offset, size, link) of a 64-bit LE ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = headers[shstrndx][4]
    sections = {}
    for name_off, sh_type, _flags, _addr, off, size, link, _info, _align, _entsize in headers:
        end = data.index(b"\0", strtab_off + name_off)
        sections[data[strtab_off + name_off : end].decode()] = (sh_type, off, size, link)
    return sections


def _elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a dynamically linked ELF file."""
    data = path.read_bytes()
    sections = _elf_sections(data)
    dyn = sections.get(".dynamic")
    dynstr = sections.get(".dynstr")
    if dyn is None or dynstr is None:
        return []
    needed = []
    for i in range(dyn[2] // 16):
        tag, val = struct.unpack_from("<qQ", data, dyn[1] + 16 * i)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = dynstr[1] + val
            needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


def _modinfo(data: bytes) -> dict[str, str]:
    sec = _elf_sections(data).get(".modinfo")
    if sec is None:
        return {}
    info: dict[str, str] = {}
    for item in data[sec[1] : sec[1] + sec[2]].split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def _resolve_in_root(root: Path, path: Path) -> Path:
    """Follow symlinks of ``path`` (inside ``root``) as if ``root`` were /."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise ValueError(f"symlink loop at {path}")


# --------------------------------------------------------------------------
# the build


class _Builder:
    def __init__(self, scratch: Path, out: Path, report: ProgressFn) -> None:
        self.scratch = scratch
        self.out = out
        self.report = report
        self.debs = scratch / "debs"
        self.root = scratch / "root"  # all packages extracted here
        self.tree = scratch / "initramfs"
        self.packages: dict[str, str] = {}  # name -> version
        self.kernel_version = ""

    # -- stages -------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        self.report(0, "checking host tools")
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            _need_tool(tool)
        self.qemu_img = _need_tool("qemu-img")

        self.report(5, "resolving Debian packages")
        kernel_pkg = self._kernel_package()
        libs = self._library_packages([AGENT_PACKAGE, DROPBEAR_PACKAGE])
        wanted = [kernel_pkg, BUSYBOX_PACKAGE, AGENT_PACKAGE, DROPBEAR_PACKAGE, *libs]

        self.report(10, f"downloading {len(wanted)} packages ({kernel_pkg})")
        debs = self._download(wanted)

        self.report(35, "extracting packages")
        for deb in debs:
            self._extract(deb)

        self.report(45, "assembling initramfs tree")
        self._make_tree()
        self.report(55, "selecting kernel modules")
        modules = self._install_modules()
        self.report(60, "copying qemu-guest-agent, dropbear and their libraries")
        libs_copied = self._install_binaries()
        self.report(75, "packing initramfs (busybox cpio, gzip)")
        self._pack_initramfs()
        initrd_size = (self.out / INITRD_NAME).stat().st_size

        self.report(85, "creating ext4 base disk")
        fs_tool = self._make_disk()

        self.report(95, "copying kernel")
        shutil.copyfile(self.kernel_image, self.out / KERNEL_NAME)

        return {
            "format_version": IMAGE_FORMAT_VERSION,
            "cmdline": DEFAULT_CMDLINE,
            "boot_complete_line": BOOT_COMPLETE_LINE,
            "kernel_version": self.kernel_version,
            "packages": dict(sorted(self.packages.items())),
            "modules": modules,
            "libraries": libs_copied,
            "initrd_bytes": initrd_size,
            "disk": {
                "virtual_size": DISK_SIZE,
                "filesystem": fs_tool,
                "label": DISK_LABEL,
                "uuid": DISK_UUID,
            },
        }

    # -- packages -----------------------------------------------------------

    def _kernel_package(self) -> str:
        proc = _run("resolve kernel", ["apt-cache", "depends", KERNEL_META_PACKAGE], stdout=None)
        for line in proc.stdout.decode().splitlines():
            m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)$", line)
            if m and not m.group(1).startswith("<"):
                return m.group(1)
        # No meta package: take the newest ABI that apt-cache search knows.
        proc = _run(
            "resolve kernel",
            ["apt-cache", "search", "--names-only", r"^linux-image-[0-9.]+-[0-9]+-cloud-amd64$"],
        )
        names = [line.split(" ", 1)[0] for line in proc.stdout.decode().splitlines() if line]

        def key(name: str) -> tuple[int, ...]:
            return tuple(int(x) for x in re.findall(r"\d+", name))

        if not names:
            raise ImageBuildError(
                "resolve kernel",
                "no linux-image-*-cloud-amd64 package known to apt; run 'apt-get update'",
            )
        newest: str = max(names, key=key)
        return newest

    def _library_packages(self, roots: list[str]) -> list[str]:
        """Library packages (lib*, zlib*) that ``roots`` depend on, recursively."""
        seen: set[str] = set()
        todo = list(roots)
        found: list[str] = []
        while todo:
            batch = [p for p in todo if p not in seen]
            todo = []
            if not batch:
                break
            seen.update(batch)
            proc = _run(
                "resolve libraries",
                [
                    "apt-cache", "depends", "--no-recommends", "--no-suggests",
                    "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                    *batch,
                ],
            )
            alternative = False
            for line in proc.stdout.decode().splitlines():
                m = re.match(r"\s+(\|?)(?:Pre)?Depends:\s*(\S+)", line)
                if not m:
                    alternative = False
                    continue
                skip = alternative  # only the first of "a | b" groups
                alternative = m.group(1) == "|"
                name = m.group(2).split(":", 1)[0]
                if skip or name.startswith("<") or not re.match(r"(lib|zlib)", name):
                    continue
                if name.startswith("libc-") or name in seen or name in found:
                    continue
                found.append(name)
                todo.append(name)
        if not found:
            raise ImageBuildError(
                "resolve libraries",
                f"apt-cache knows no dependencies of {roots}; run 'apt-get update'",
            )
        return sorted(found)

    def _download(self, packages: list[str]) -> list[Path]:
        self.debs.mkdir()
        # Let apt's sandbox user write here (avoids a warning when run as root).
        os.chmod(self.scratch, 0o755)
        os.chmod(self.debs, 0o777)
        _run("download packages", ["apt-get", "download", *packages], cwd=self.debs)
        debs = sorted(self.debs.glob("*.deb"))
        if len(debs) != len(packages):
            raise ImageBuildError(
                "download packages",
                f"expected {len(packages)} .deb files, got {[d.name for d in debs]}",
            )
        return debs

    def _extract(self, deb: Path) -> None:
        info = _run("extract packages", ["dpkg-deb", "-f", deb, "Package", "Version"])
        fields = dict(
            line.split(": ", 1) for line in info.stdout.decode().splitlines() if ": " in line
        )
        self.packages[fields.get("Package", deb.name)] = fields.get("Version", "?")
        _run("extract packages", ["dpkg-deb", "-x", deb, self.root])

    # -- initramfs tree -----------------------------------------------------

    def _make_tree(self) -> None:
        t = self.tree
        for d in (
            "bin", "sbin", "usr/bin", "usr/sbin", "usr/share/udhcpc", "lib/x86_64-linux-gnu",
            "lib64", "lib/modules", "etc/vmplane", "etc/dropbear", "etc/acpi/PWRF", "dev",
            "proc", "sys", "run", "tmp", "var/log", "var/lib", "mnt/disk", "mnt/seed", "root",
        ):
            (t / d).mkdir(parents=True, exist_ok=True)
        os.chmod(t / "root", 0o700)
        os.chmod(t / "tmp", 0o1777)
        (t / "var/run").symlink_to("../run")
        (t / "usr/lib").symlink_to("../lib")

        busybox = self.root / "bin/busybox"
        if not busybox.is_file():
            raise ImageBuildError("assemble initramfs", f"{BUSYBOX_PACKAGE} has no /bin/busybox")
        self.busybox = busybox
        shutil.copy2(busybox, t / "bin/busybox")
        applets = _run("assemble initramfs", [busybox, "--list-full"]).stdout.decode().split()
        for applet in applets:
            link = t / applet
            if link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(t / "bin/busybox", link.parent))

        # Guest files live beside this module (package data "images/*").
        files = {
            "guest-init.sh": ("init", 0o755),
            "guest-udhcpc.sh": ("usr/share/udhcpc/default.script", 0o755),
            "guest-shutdown.sh": ("sbin/shutdown", 0o755),
            "guest-acpi-power.sh": ("etc/acpi/PWRF/00000080", 0o755),
            "guest-profile": ("etc/profile", 0o644),
        }
        guest = resources.files(__package__)
        for src, (dst, mode) in files.items():
            try:
                data = guest.joinpath(src).read_bytes()
            except OSError as exc:
                raise ImageBuildError(
                    "assemble initramfs", f"guest file {src!r} missing from the package: {exc}"
                ) from exc
            path = t / dst
            if path.is_symlink():
                path.unlink()
            path.write_bytes(data)
            os.chmod(path, mode)

        etc = {
            "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n", 0o644),
            "etc/shadow": ("root:*:19000:0:99999:7:::\n", 0o600),
            "etc/group": ("root:x:0:\ntty:x:5:\n", 0o644),
            "etc/shells": ("/bin/sh\n/bin/ash\n", 0o644),
            "etc/hostname": ("vmplane-tiny\n", 0o644),
            "etc/hosts": ("127.0.0.1 localhost\n::1 localhost\n", 0o644),
            "etc/resolv.conf": ("", 0o644),
            "etc/nsswitch.conf": ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0o644),
        }
        for dst, (text, mode) in etc.items():
            (t / dst).write_text(text)
            os.chmod(t / dst, mode)

    def _install_modules(self) -> list[str]:
        mod_root = self.root / "lib/modules"
        versions = sorted(p.name for p in mod_root.iterdir()) if mod_root.is_dir() else []
        if len(versions) != 1:
            raise ImageBuildError("kernel modules", f"expected one kernel in {mod_root}, got {versions}")
        self.kernel_version = versions[0]
        images = sorted((self.root / "boot").glob(f"vmlinuz-{self.kernel_version}"))
        if not images:
            raise ImageBuildError("kernel modules", f"no /boot/vmlinuz-{self.kernel_version}")
        self.kernel_image = images[0]

        index: dict[str, Path] = {}
        for path in (mod_root / self.kernel_version / "kernel").rglob("*.ko*"):
            name = path.name.split(".ko", 1)[0].replace("-", "_")
            index.setdefault(name, path)

        def load(path: Path) -> bytes:
            data = path.read_bytes()
            if path.name.endswith(".ko.xz"):
                data = lzma.decompress(data)
            elif not path.name.endswith(".ko"):
                raise ImageBuildError("kernel modules", f"unsupported module compression: {path.name}")
            return data

        order: list[str] = []
        blobs: dict[str, bytes] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = name.replace("-", "_")
            if name in blobs or not name:
                return
            if name in chain:
                raise ImageBuildError("kernel modules", f"module dependency loop: {chain + (name,)}")
            path = index.get(name)
            if path is None:
                raise ImageBuildError(
                    "kernel modules", f"module {name!r} not found in {self.kernel_version}"
                )
            data = load(path)
            for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
                visit(dep, chain + (name,))
            blobs[name] = data
            order.append(name)

        for name in GUEST_MODULES:
            visit(name, ())
        dest = self.tree / "lib/modules"
        for name in order:
            (dest / f"{name}.ko").write_bytes(blobs[name])
        (self.tree / "etc/vmplane/modules").write_text("".join(f"{n}.ko\n" for n in order))
        return order

    def _install_binaries(self) -> list[str]:
        binaries = {
            "usr/sbin/qemu-ga": "usr/sbin/qemu-ga",
            "usr/sbin/dropbear": "usr/sbin/dropbear",
            "usr/bin/dropbearkey": "usr/bin/dropbearkey",  # each guest makes its host key at first boot
        }
        for src, dst in binaries.items():
            path = self.root / src
            if not path.is_file():
                raise ImageBuildError("copy binaries", f"/{src} missing from the extracted packages")
            shutil.copy2(path, self.tree / dst)

        lib_dirs = [
            self.root / "lib/x86_64-linux-gnu",
            self.root / "usr/lib/x86_64-linux-gnu",
            self.root / "lib64",
        ]

        def find(soname: str) -> Path:
            for d in lib_dirs:
                candidate = d / soname
                if candidate.exists() or candidate.is_symlink():
                    return _resolve_in_root(self.root, candidate)
            raise ImageBuildError(
                "copy libraries", f"shared library {soname} not found in the extracted packages"
            )

        libdir = self.tree / "lib/x86_64-linux-gnu"
        copied: list[str] = []
        todo = [self.tree / dst for dst in binaries.values()]
        while todo:
            for soname in _elf_needed(todo.pop()):
                if soname in copied:
                    continue
                shutil.copyfile(find(soname), libdir / soname)
                os.chmod(libdir / soname, 0o755)
                copied.append(soname)
                todo.append(libdir / soname)
        loader = "ld-linux-x86-64.so.2"  # normally already there: libc needs it
        if loader not in copied:
            shutil.copyfile(find(loader), libdir / loader)
            os.chmod(libdir / loader, 0o755)
            copied.append(loader)
        (self.tree / "lib64" / loader).symlink_to(f"../lib/x86_64-linux-gnu/{loader}")
        return sorted(copied)

    def _pack_initramfs(self) -> None:
        entries: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.tree):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.tree)
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
                entries.append(name if rel == "." else f"{rel}/{name}")
        entries.sort()
        cpio = self.scratch / "initrd.cpio"
        with open(cpio, "wb") as fh:
            _run(
                "pack initramfs",
                [self.busybox, "cpio", "-o", "-H", "newc", "-R", "0:0"],
                cwd=self.tree,
                stdin=("\n".join(entries) + "\n").encode(),
                stdout=fh,
            )
        target = self.out / INITRD_NAME
        with open(cpio, "rb") as src, open(target, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)

    # -- disk ---------------------------------------------------------------

    def _make_disk(self) -> str:
        raw = self.scratch / "disk.raw"
        with open(raw, "wb") as fh:
            fh.truncate(DISK_SIZE)
        mkfs = _which("mkfs.ext4")
        if mkfs is not None:
            conf = self.scratch / "mke2fs.conf"
            conf.write_text(_MKE2FS_CONF)
            _run(
                "format disk",
                [
                    mkfs, "-F", "-q", "-t", "ext4", "-L", DISK_LABEL, "-U", DISK_UUID,
                    "-m", "0", "-E",
                    f"lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed={DISK_UUID}",
                    raw,
                ],
                env={"MKE2FS_CONFIG": str(conf), "E2FSPROGS_FAKE_TIME": str(SOURCE_DATE_EPOCH)},
            )
            fs = "ext4"
        else:
            # No e2fsprogs on the host: busybox mke2fs makes an ext2 filesystem,
            # which the guest's ext4 driver mounts just the same.
            _run("format disk", [self.busybox, "mke2fs", "-F", "-L", DISK_LABEL, raw])
            fs = "ext2"
        _run(
            "convert disk",
            [self.qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, self.out / DISK_NAME],
        )
        raw.unlink()
        return fs
