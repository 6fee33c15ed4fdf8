"""What `vmplane serve` says while it starts: one line for the database's migrations, the
accelerator in words ("no usable KVM: guests run ~10x slower under TCG", QEMU's own text only
at debug level), and, only once it answers, the ready line with the web console's address and
the key file, then what the CLI in another shell needs to export."""

import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane.drivers.qemu import accel
from vmplane.images.tiny import TinyImage
from vmplane.store.db import MIGRATIONS

from ..support import free_port, require_qemu

pytestmark = pytest.mark.slow

HEAD = max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
"""the newest migration's number"""

# `vmplane serve` with only the KVM probe's answer changed: /dev/kvm is a path that does not exist
SERVE = (
    "import sys; from vmplane.drivers.qemu import accel; accel.KVM_DEVICE = sys.argv.pop(1); "
    "from vmplane.cli import main; sys.argv[0] = 'vmplane'; main()"
)


def start(data_dir: Path, port: int, log: Path, kvm_device: str) -> "subprocess.Popen[bytes]":
    argv = [sys.executable, "-c", SERVE, kvm_device, "serve", "--port", str(port), "--data-dir", str(data_dir), "--driver", "qemu", "--accel", "auto"]
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_for_line(log: Path, proc: "subprocess.Popen[bytes]", text: str, timeout: float = 120) -> float:
    """Seconds until `text` appears in the log."""
    started = time.monotonic()
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"server exited:\n{log.read_text(errors='replace')}"
        assert time.monotonic() - started < timeout, f"no {text!r} in {timeout} s:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)
    return time.monotonic() - started


def stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_start_up_log_says_what_it_did(tmp_path: Path) -> None:
    require_qemu()
    data, log, port = tmp_path / "data", tmp_path / "serve.log", free_port()
    proc = start(data, port, log, str(tmp_path / "no-kvm"))
    try:
        ready = f"vmplane is ready: http://127.0.0.1:{port}/ui/ (API key in {data}/admin-api-key)"
        wait_for_line(log, proc, ready)
        # said once it answers: the node and the tiny-linux template are there
        key = {"X-API-Key": (data / "admin-api-key").read_text().strip()}
        base = f"http://127.0.0.1:{port}"
        assert [n["id"] for n in httpx.get(f"{base}/api/v1/nodes", headers=key, timeout=10).json()["items"]] == ["node-1"]
        assert httpx.get(f"{base}/api/v1/templates/tiny-linux", headers=key, timeout=10).status_code == 200
        assert httpx.get(f"{base}/ui/", timeout=10).status_code == 200
        wait_for_line(log, proc, "for the CLI in another shell")
    finally:
        stop(proc)
    lines = log.read_text().splitlines()
    said = [re.sub(r"^\S+ \S+ (\w+ \S+: )", r"\1", line) for line in lines]  # without the time stamp

    # one line for the migrations
    assert [s for s in said if "database at" in s] == [f"INFO vmplane.store: database at {data}/vmplane.db: migrated 0000 -> {HEAD}"]
    assert not [s for s in said if "alembic" in s or "Running upgrade" in s]
    # the accelerator in words, QEMU's (or the kernel's) text not at info level
    assert f"WARNING vmplane: accelerator: tcg (no usable KVM: guests run ~10x slower under TCG; {tmp_path}/no-kvm: No such file or directory)" in said
    # ready only after the image and the node; nothing says "serving" before it
    at = said.index(f"INFO vmplane: {ready}")
    assert any("registered template tiny-linux" in s for s in said[:at]) and any("started: 1 node(s)" in s for s in said[:at])
    assert not [s for s in said[:at] if "serving on" in s or "is ready" in s]
    assert said[at + 1] == f"INFO vmplane: for the CLI in another shell: export VMPLANE_URL=http://127.0.0.1:{port} VMPLANE_DATA_DIR={data}"

    # started again on the same store: nothing to migrate
    log2 = tmp_path / "again.log"
    proc = start(data, port, log2, str(tmp_path / "no-kvm"))
    try:
        wait_for_line(log2, proc, "vmplane is ready:")
    finally:
        stop(proc)
    assert f"INFO vmplane.store: database at {data}/vmplane.db: up to date ({HEAD})" in log2.read_text()


async def test_a_failed_kvm_probe_is_said_in_words(tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    """/dev/kvm opens but the probe guest aborts, as under some nested KVM: the operator reads
    the sentence, QEMU's assertion is kept at debug level."""
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(device))
    raw = "probe QEMU exited with status -6: qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."

    async def aborted(image: TinyImage, *, qemu_binary: str, timeout: float) -> tuple[bool, str]:
        return False, raw

    monkeypatch.setattr(accel, "probe_kvm", aborted)
    image = TinyImage(kernel=tmp_path / "k", initrd=tmp_path / "i", disk=tmp_path / "d", cmdline="")
    with caplog.at_level(logging.DEBUG, logger="vmplane.drivers.qemu.accel"):
        chosen, why = await accel.pick_accel("auto", image)
    assert chosen == "tcg"
    assert why == f"no usable KVM: guests run ~10x slower under TCG; {device} opens but the probe QEMU exited with status -6; details at --log-level debug"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, f"KVM probe: {raw}")]
