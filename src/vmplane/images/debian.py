"""Build a Debian cloud image (``vmplane image build debian-12``) from Debian's packages alone.

Stages: mmdebstrap makes the root tree in a scratch directory (the recipe is in
:mod:`vmplane.images.debian_recipe`); /boot's files go into a FAT image that ``syslinux
--install`` makes bootable; ``mke2fs -d`` makes the ext4 root from the rest; ``sfdisk`` writes
the partition table on a sparse raw file, syslinux's MBR and both file systems are copied in
at their offsets; ``qemu-img convert -c`` makes the compressed qcow2.  No loop device and no
mount: only files.  The result is cached as ``<cache>/<recipe digest>.qcow2``; a second build
of the same recipe returns at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vmplane.images.debian_recipe import (
    BOOT_LABEL,
    BOOT_VOLUME_ID,
    RECIPES,
    ROOT_LABEL,
    ROOT_UUID,
    DebianRecipe,
    host_mirror,
    mmdebstrap_argv,
    recipe_digest,
    root_files,
)
from vmplane.images.tiny import _MKE2FS_CONF, SOURCE_DATE_EPOCH, ImageBuildError, _need_tool, _run

__all__ = ["DebianImageError", "build_debian_image", "debian_image_path"]

MIB = 1 << 20
DISK_SIZE = 2048 * MIB  # the base disk's virtual size; VMs' overlays may be larger (growpart)
BOOT_START = 1 * MIB
BOOT_SIZE = 255 * MIB  # two kernels with their initrds fit, so an upgrade keeps the old one
ROOT_START = BOOT_START + BOOT_SIZE
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")

ProgressFn = Callable[[int, str], None]


class DebianImageError(ImageBuildError):
    """A Debian image could not be built; ``step`` names the failed stage."""

    def __init__(self, step: str, message: str, stderr: str = "") -> None:
        super().__init__(step, message, stderr)
        text = f"debian image build failed at step {step!r}: {message}"
        if stderr.strip():
            text += "\n--- output ---\n" + stderr.strip()[-4000:]
        self.args = (text,)

    def __str__(self) -> str:
        return str(self.args[0])


def debian_image_path(cache_root: Path, recipe: DebianRecipe) -> Path:
    """Where ``recipe``'s image is cached."""
    return Path(cache_root) / f"{recipe_digest(recipe)}.qcow2"


def build_debian_image(name: str, cache_root: Path, *, force: bool = False, progress: ProgressFn | None = None, mirror: str | None = None) -> Path:
    """Build (or reuse) the image ``name`` (a key of RECIPES) and return its qcow2 path.

    ``progress(percent, message)`` is called at every stage and for mmdebstrap's own lines.
    Concurrent builds of one recipe are serialised by a lock file.  Raises
    :class:`DebianImageError`, or KeyError for an unknown name."""
    recipe = RECIPES[name]
    report: ProgressFn = progress or (lambda _pct, _msg: None)
    dest = debian_image_path(cache_root, recipe)
    if dest.is_file() and not force:
        report(100, f"{name}: cached in {dest}")
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DebianImageError("prepare", f"cannot create {dest.parent}: {exc}") from exc
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file() and not force:
            report(100, f"{name}: cached in {dest}")
            return dest
        with tempfile.TemporaryDirectory(prefix=f"vmplane-{name}-", dir=os.environ.get("TMPDIR")) as scratch:
            try:
                _Build(recipe, Path(scratch), report, mirror if mirror is not None else host_mirror()).run(dest)
            except DebianImageError:
                raise
            except ImageBuildError as exc:
                raise DebianImageError(exc.step, exc.message, exc.stderr) from exc
    report(100, f"{name}: ready in {dest}")
    return dest


class _Build:
    def __init__(self, recipe: DebianRecipe, scratch: Path, report: ProgressFn, mirror: str | None) -> None:
        self.recipe = recipe
        self.scratch = scratch
        self.report = report
        self.mirror = mirror
        self.root = scratch / "root"
        self.env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "MTOOLS_SKIP_CHECK": "1"}

    def run(self, dest: Path) -> None:
        for tool in ("mmdebstrap", "sfdisk", "mke2fs", "mkfs.fat", "mcopy", "syslinux", "qemu-img"):
            if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
                raise DebianImageError("host tools", f"{tool!r} not found on the host; run scripts/install-image-tools.sh")
        if not MBR_CODE.is_file():
            raise DebianImageError("host tools", f"{MBR_CODE} missing; run scripts/install-image-tools.sh (syslinux-common)")
        self.report(2, f"{self.recipe.name}: mmdebstrap {self.recipe.suite} from {self.mirror or 'the default mirror'}")
        self._mmdebstrap(dest.with_suffix(".log"))
        self.report(70, "boot partition: FAT + syslinux")
        boot = self._boot_fs()
        self.report(75, "root partition: ext4 from the tree (mke2fs -d)")
        rootfs = self._root_fs()
        self.report(82, "disk: partition table, MBR, file systems")
        raw = self._disk(boot, rootfs)
        self.report(88, "qcow2: compressing")
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            _run("qcow2", [_need_tool("qemu-img"), "convert", "-c", "-f", "raw", "-O", "qcow2", raw, tmp])
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)  # nothing half-written stays in the cache

    def _mmdebstrap(self, log_path: Path) -> None:
        """Run mmdebstrap; its whole output goes to ``log_path`` (beside the image), a condensed
        line per stage to the progress callback."""
        files_dir = self.scratch / "files"
        for rel, (content, mode) in root_files(self.recipe).items():
            path = files_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        argv = mmdebstrap_argv(self.recipe, files_dir, self.root, self.mirror)
        env = dict(os.environ, LC_ALL="C", **self.env)
        started = time.monotonic()
        tail: list[str] = []
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace")
        except OSError as exc:
            raise DebianImageError("mmdebstrap", f"cannot run mmdebstrap: {exc}") from exc
        assert proc.stdout is not None
        pct = 3
        with open(log_path, "w") as log:
            for raw in proc.stdout:
                log.write(raw)
                line = raw.rstrip()
                tail = (tail + [line])[-60:]
                message = _condense(line)
                if message:
                    pct = max(pct, next((p for key, p in _STAGES if key in message), pct))
                    self.report(pct, f"mmdebstrap: {message} ({time.monotonic() - started:.0f} s)")
        if proc.wait() != 0:
            text = "\n".join(tail)
            if any(s in text for s in ("Could not resolve", "Temporary failure resolving", "Failed to fetch", "Unable to connect", "Connection refused", "Network is unreachable", "Release' does not have a Release file", "Err:")):
                raise DebianImageError("mmdebstrap", f"cannot download {self.recipe.suite} from the mirror {self.mirror or '(default)'}: no network to it, or it does not serve this suite", text)
            raise DebianImageError("mmdebstrap", f"mmdebstrap exited with status {proc.returncode} (whole output in {log_path})", text)
        if not (self.root / "boot" / "syslinux.cfg").is_file():
            raise DebianImageError("mmdebstrap", "the kernel hook wrote no /boot/syslinux.cfg")

    def _boot_fs(self) -> Path:
        boot = self.scratch / "boot.img"
        _run("boot partition", [_need_tool("mkfs.fat"), "-C", "-n", BOOT_LABEL, "-i", BOOT_VOLUME_ID, boot, str(BOOT_SIZE // 1024)], env=self.env)
        items = sorted((self.root / "boot").iterdir())
        if items:
            _run("boot partition", [_need_tool("mcopy"), "-s", "-p", "-m", "-i", boot, *items, "::/"], env=self.env)
        _run("boot partition", [_need_tool("syslinux"), "--install", boot], env=self.env)
        for item in items:  # the guest mounts the FAT partition on the empty /boot
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
        return boot

    def _root_fs(self) -> Path:
        rootfs = self.scratch / "root.img"
        conf = self.scratch / "mke2fs.conf"
        conf.write_text(_MKE2FS_CONF)
        size_kib = (DISK_SIZE - ROOT_START) // 1024
        env = dict(self.env, MKE2FS_CONFIG=str(conf), E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH))
        _run("root partition", [_need_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-U", ROOT_UUID, "-E", f"hash_seed={ROOT_UUID}", "-d", self.root, rootfs, f"{size_kib}k"], env=env)
        return rootfs

    def _disk(self, boot: Path, rootfs: Path) -> Path:
        raw = self.scratch / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(DISK_SIZE)
        table = f"label: dos\nlabel-id: 0x{BOOT_VOLUME_ID}\n{BOOT_START // 512},{BOOT_SIZE // 512},c,*\n{ROOT_START // 512},,83\n"
        _run("partition table", [_need_tool("sfdisk"), "--no-reread", "--no-tell-kernel", raw], stdin=table.encode())
        with open(raw, "r+b") as disk:
            disk.write(MBR_CODE.read_bytes()[:440])  # boot code only: the table follows at 446
            for offset, part in ((BOOT_START, boot), (ROOT_START, rootfs)):
                _copy_sparse(part, disk, offset)
        return raw


def _copy_sparse(src: Path, dst: BinaryIO, offset: int) -> None:
    """Copy ``src`` into the open file ``dst`` at ``offset``, skipping all-zero blocks (the
    raw disk stays sparse)."""
    block = 1 << 20
    zero = bytes(block)
    with open(src, "rb") as f:
        pos = offset
        while chunk := f.read(block):
            if chunk != zero[: len(chunk)]:
                dst.seek(pos)
                dst.write(chunk)
            pos += len(chunk)


# mmdebstrap's stages and where they put the progress bar (it takes ~70% of the build)
_STAGES = (("running apt-get update", 5), ("downloading packages", 8), ("extracting archives", 12), ("installing essential", 15),
           ("installing remaining", 22), ("customize-hook", 60), ("cleaning package lists", 66), ("success in", 68))  # fmt: skip


def _condense(line: str) -> str:
    """mmdebstrap's and apt's output, one short message per stage (the rest is dropped)."""
    if line.startswith(("I: ", "W: ", "E: ")):
        return line[3:][:100]
    for prefix in ("Setting up ", "Unpacking "):
        if line.startswith(prefix) and ("linux-image" in line or "cloud-init" in line or "systemd " in line):
            return line[:100]
    if line.startswith("update-initramfs:") or line.startswith("zz-vmplane-syslinux:"):
        return line[:100]
    return ""
