"""ISO images for the ISO library's tests: a small ISO 9660 image made with pycdlib (what
the NoCloud seed is made with), and one that GRUB boots on BIOS and UEFI (grub-mkrescue, from
Debian's grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools: scripts/install-qemu.sh)."""

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest


def small_iso(path: Path, content: bytes = b"hello from an ISO\n") -> Path:
    """An ISO 9660 image holding one file (tens of KiB)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="VMPLANE_TEST")
    iso.add_fp(io.BytesIO(content), len(content), "/HELLO.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


GRUB_CFG = """\
set timeout=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "vmplane tiny" {
  linux /vmlinuz %(cmdline)s
  initrd /initrd.img
}
"""


def bootable_iso(path: Path, kernel: Path, initrd: Path, cmdline: str) -> Path:
    """An ISO whose GRUB boots `kernel` + `initrd` with `cmdline` at once, on BIOS (El Torito)
    and on UEFI (its EFI system partition image): grub-mkrescue's hybrid image."""
    if not (shutil.which("grub-mkrescue") and shutil.which("xorriso")):
        pytest.fail("grub-mkrescue or xorriso missing (scripts/install-qemu.sh installs them)")
    tree = path.parent / f"{path.stem}-tree"
    (tree / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel, tree / "vmlinuz")
    shutil.copyfile(initrd, tree / "initrd.img")
    (tree / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG % {"cmdline": cmdline})
    subprocess.run(["grub-mkrescue", "-o", str(path), str(tree)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return path
