"""Choosing QEMU's accelerator: KVM only when a probe guest really boots with it.

An openable /dev/kvm is not enough: under a paravirtual KVM stock kernels abort at once
(`-cpu host`) or crawl without ever printing, so the probe is bounded in time.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import time

from ...images.tiny import INIT_START_LINE, TinyImage

PROBE_TIMEOUT = 8.0
KVM_DEVICE = "/dev/kvm"
NO_KVM = "no usable KVM: guests run ~10x slower under TCG"
"""what the operator is told when auto falls back to TCG; the probe's own answer (a QEMU
assertion, an errno) follows in brief and in full at debug level"""

log = logging.getLogger(__name__)


async def pick_accel(
    mode: str, image: TinyImage, *, qemu_binary: str = "qemu-system-x86_64", timeout: float = PROBE_TIMEOUT
) -> tuple[str, str]:
    """(accel, reason). `mode` "kvm" or "tcg" is taken as asked; "auto" boots `image` with
    `-accel kvm -cpu host` and picks kvm only if it prints INIT_START_LINE within `timeout`."""
    if mode in ("kvm", "tcg"):
        return mode, f"{mode} as configured"
    if mode != "auto":
        raise ValueError(f"accelerator mode must be auto, kvm or tcg, not {mode!r}")
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("KVM probe: cannot open %s: %s", KVM_DEVICE, exc)
        return "tcg", f"{NO_KVM}; {KVM_DEVICE}: {exc.strerror or exc}"
    os.close(fd)
    ok, detail = await probe_kvm(image, qemu_binary=qemu_binary, timeout=timeout)
    if ok:
        return "kvm", f"KVM probe guest booted ({detail})"
    log.debug("KVM probe: %s", detail)
    return "tcg", f"{NO_KVM}; {KVM_DEVICE} opens but {_brief(detail)}; details at --log-level debug"


def _brief(detail: str) -> str:
    """The probe's answer without QEMU's own text (an assertion with source paths means
    nothing to an operator): "the probe guest printed nothing in 8 s", "the probe QEMU
    exited with status -6"."""
    head = detail.split(":", 1)[0]
    return f"the {head}" if head.startswith("probe ") else head


async def probe_kvm(image: TinyImage, *, qemu_binary: str, timeout: float) -> tuple[bool, str]:
    """Boot the tiny image under KVM until its first serial line; never longer than `timeout`."""
    if shutil.which(qemu_binary) is None:
        return False, f"{qemu_binary} not found"
    argv = [
        qemu_binary, "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline,
        "-serial", "stdio",
    ]
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {qemu_binary}: {exc.strerror}"
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    marker = INIT_START_LINE.encode()
    seen = b""
    result: tuple[bool, str] | None = None
    eof = False
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    eof = True  # QEMU is exiting
                    break
                seen = (seen + chunk)[-4096:]
                if marker in seen:
                    result = True, f"first serial line after {time.monotonic() - started:.1f} s"
                    break
    except TimeoutError:
        result = False, f"probe guest printed nothing in {timeout:g} s"
    finally:
        try:
            # After EOF on stdout QEMU is exiting by itself: kill() would reap it behind
            # asyncio's child watcher, so give it a moment first.
            if eof:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 2)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
            err = b""
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(stderr_task, 2)
        except BaseException:
            stderr_task.cancel()
            raise
    if result is not None:
        return result
    lines = err.decode(errors="replace").strip().splitlines()
    return False, f"probe QEMU exited with status {proc.returncode}" + (f": {lines[-1]}" if lines else "")
