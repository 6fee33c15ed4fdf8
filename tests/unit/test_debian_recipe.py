"""The Debian image recipe (vmplane.images.debian_recipe): the kernel hook that keeps the
bootloader on the newest kernel, run on a fake /boot; the recipe digest that names the cache;
the mmdebstrap command; the host's mirror; and (slow) that debian-12 and debian-13 resolve
against the mirror."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmplane.cli.main import app
from vmplane.images import debian_recipe as dr
from vmplane.images.debian import DebianImageError, build_debian_image, debian_image_path


def _hook(tmp_path: Path) -> Path:
    hook = tmp_path / dr.HOOK_NAME
    hook.write_bytes(dr.hook_script())
    hook.chmod(0o755)
    return hook


def _run_hook(hook: Path, boot: Path, defaults: Path) -> str:
    env = dict(os.environ, BOOT_DIR=str(boot), DEFAULTS_FILE=str(defaults))
    subprocess.run([str(hook), "6.1.0-99-cloud-amd64", "/boot/vmlinuz-6.1.0-99-cloud-amd64"], env=env, check=True, capture_output=True)
    return (boot / "syslinux.cfg").read_text()


def _kernel(boot: Path, version: str, initrd: bool = True) -> None:
    (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
    if initrd:
        (boot / f"initrd.img-{version}").write_bytes(b"initrd")


def test_the_hook_boots_the_newest_kernel_with_an_initrd_and_keeps_the_one_before(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    defaults = tmp_path / "vmplane-syslinux"
    defaults.write_bytes(dict(dr.root_files(dr.RECIPES["debian-12"]))["etc/default/vmplane-syslinux"][0])
    hook = _hook(tmp_path)
    _kernel(boot, "6.1.0-9-cloud-amd64")
    _kernel(boot, "6.1.0-10-cloud-amd64")  # newer by version order, though "10" < "9" as text
    _kernel(boot, "6.1.0-11-cloud-amd64", initrd=False)  # being installed: no initrd yet
    cfg = _run_hook(hook, boot, defaults)
    assert "DEFAULT linux" in cfg and "SERIAL 0 115200" in cfg
    linux, previous = cfg.split("LABEL linux")[1].split("LABEL previous")
    assert "KERNEL /vmlinuz-6.1.0-10-cloud-amd64" in linux
    assert f"APPEND initrd=/initrd.img-6.1.0-10-cloud-amd64 {dr.kernel_cmdline()}" in linux
    assert "console=ttyS0" in linux and f"root=UUID={dr.ROOT_UUID}" in linux
    assert "KERNEL /vmlinuz-6.1.0-9-cloud-amd64" in previous
    assert "6.1.0-11" not in cfg

    # the initrd of the new kernel arrives (initramfs-tools' post-update.d runs the hook again)
    (boot / "initrd.img-6.1.0-11-cloud-amd64").write_bytes(b"initrd")
    cfg = _run_hook(hook, boot, defaults)
    assert "KERNEL /vmlinuz-6.1.0-11-cloud-amd64" in cfg.split("LABEL previous")[0]
    assert "KERNEL /vmlinuz-6.1.0-10-cloud-amd64" in cfg.split("LABEL previous")[1]
    assert not (boot / "syslinux.cfg.new").exists()

    # the old kernels are removed (postrm.d): one kernel, no fallback label
    for v in ("6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"):
        (boot / f"vmlinuz-{v}").unlink()
        (boot / f"initrd.img-{v}").unlink()
    cfg = _run_hook(hook, boot, defaults)
    assert "LABEL previous" not in cfg and "KERNEL /vmlinuz-6.1.0-11-cloud-amd64" in cfg


def test_the_hook_leaves_the_config_alone_when_no_kernel_has_an_initrd(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "syslinux.cfg").write_text("old\n")
    _kernel(boot, "6.1.0-11-cloud-amd64", initrd=False)
    assert _run_hook(_hook(tmp_path), boot, tmp_path / "missing") == "old\n"


def test_the_hook_is_installed_where_kernels_and_initrds_run_hooks() -> None:
    files = dr.root_files(dr.RECIPES["debian-12"])
    for path in ("etc/kernel/postinst.d/", "etc/kernel/postrm.d/", "etc/initramfs/post-update.d/"):
        content, mode = files[path + dr.HOOK_NAME]
        assert content == dr.hook_script() and mode == 0o755
    assert b"Name=en* eth*" in files["etc/systemd/network/90-vmplane-dhcp.network"][0]
    cloud = files["etc/cloud/cloud.cfg.d/90-vmplane.cfg"][0].decode()
    assert "datasource_list: [NoCloud, None]" in cloud and "name: debian" in cloud
    assert f"UUID={dr.ROOT_UUID} / ext4" in files["etc/fstab"][0].decode()


def test_the_digest_follows_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twelve = dr.RECIPES["debian-12"]
    base = dr.recipe_digest(twelve)
    assert dr.recipe_digest(dr.RECIPES["debian-12"]) == base  # stable
    assert dr.recipe_digest(dr.RECIPES["debian-13"]) != base  # the suite
    assert dr.recipe_digest(dataclasses.replace(twelve, packages=(*twelve.packages, "vim"))) != base
    assert debian_image_path(tmp_path, twelve) == tmp_path / f"{base}.qcow2"
    monkeypatch.setattr(dr, "BUILDER_VERSION", dr.BUILDER_VERSION + 1)
    assert dr.recipe_digest(twelve) != base
    monkeypatch.undo()
    monkeypatch.setattr(dr, "hook_script", lambda: b"#!/bin/sh\nexit 0\n")
    assert dr.recipe_digest(twelve) != base
    monkeypatch.undo()
    monkeypatch.setattr(dr, "CUSTOMIZE_HOOKS", dr.CUSTOMIZE_HOOKS[:-1])
    assert dr.recipe_digest(twelve) != base


def test_the_mmdebstrap_command(tmp_path: Path) -> None:
    argv = dr.mmdebstrap_argv(dr.RECIPES["debian-13"], tmp_path / "files", tmp_path / "root", "http://mirror.example/debian")
    assert argv[0] == "mmdebstrap" and argv[-3:] == ["trixie", str(tmp_path / "root"), "http://mirror.example/debian"]
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    for pkg in ("linux-image-cloud-amd64", "cloud-init", "cloud-guest-utils", "openssh-server", "qemu-guest-agent", "systemd-sysv"):
        assert pkg in include
    assert f"--essential-hook=sync-in {tmp_path / 'files'} /" in argv
    assert dr.mmdebstrap_argv(dr.RECIPES["debian-12"], tmp_path, tmp_path / "r", None)[-2:] == ["bookworm", str(tmp_path / "r")]


def test_the_host_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert dr.host_mirror(tmp_path) is None
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm\n"
    )
    assert dr.host_mirror(tmp_path) == "http://archive.example/debian"
    (tmp_path / "sources.list").write_text("# deb http://commented.example/debian bookworm main\ndeb [arch=amd64] http://one-line.example/debian bookworm main\n")
    assert dr.host_mirror(tmp_path) == "http://one-line.example/debian"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debian-12", "debian-13"])
def test_the_recipe_resolves_against_the_mirror(name: str, tmp_path: Path) -> None:
    """mmdebstrap --simulate: the suite exists on the host's mirror and every package of the
    recipe (with its dependencies) is installable from it. Nothing is downloaded but indexes."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap missing (scripts/install-image-tools.sh installs it)")
    recipe = dr.RECIPES[name]
    argv = dr.mmdebstrap_argv(recipe, tmp_path / "files", tmp_path / "root", dr.host_mirror())
    proc = subprocess.run([argv[0], "--simulate", *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_a_mirror_out_of_reach_is_named_in_the_error(tmp_path: Path) -> None:
    """No network to the mirror: the build fails at mmdebstrap and says so, and caches nothing."""
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        pytest.skip("needs mmdebstrap and root (scripts/install-image-tools.sh; the build runs as root)")
    seen: list[str] = []
    with pytest.raises(DebianImageError) as info:
        build_debian_image("debian-12", tmp_path / "cache", mirror="http://127.0.0.1:9/debian", progress=lambda _p, m: seen.append(m))
    assert info.value.step == "mmdebstrap"
    assert "no network to it" in str(info.value) and "http://127.0.0.1:9/debian" in str(info.value)
    assert seen and seen[0].startswith("debian-12: mmdebstrap bookworm")
    assert not list((tmp_path / "cache").glob("*.qcow2"))


def test_the_cli_names_the_images_it_can_build() -> None:
    result = CliRunner().invoke(app, ["image", "build", "debian-11"])
    assert result.exit_code == 2
    assert "unknown image 'debian-11'; known: tiny, debian-12, debian-13" in result.output
