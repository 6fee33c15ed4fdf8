"""Disk images through `qemu-img`: inspect, create overlays and blank disks, grow."""

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from ...errors import DriverError

SUPPORTED_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True, slots=True)
class DiskInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    raw: dict[str, Any]


async def run_tool(
    argv: list[str], what: str, timeout: float = 120, on_stdout: Callable[[bytes], Awaitable[None]] | None = None, **details: Any
) -> tuple[int, str, str]:
    """Run a host tool (argv, no shell); returns (status, stdout, stderr). `on_stdout`, if
    given, is handed stdout as it comes (a progress meter) instead of returning it."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise DriverError(f"{what}: cannot run {argv[0]}: {exc.strerror}", **details) from exc

    async def streamed() -> tuple[bytes, bytes]:
        assert proc.stdout is not None and proc.stderr is not None and on_stdout is not None
        err = asyncio.ensure_future(proc.stderr.read())
        try:
            while chunk := await proc.stdout.read(4096):
                await on_stdout(chunk)
            return b"", await err
        finally:
            err.cancel()

    try:
        out, err = await asyncio.wait_for(proc.communicate() if on_stdout is None else streamed(), timeout)
        await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _checked(argv: list[str], what: str, **details: Any) -> str:
    status, out, err = await run_tool(argv, what, **details)
    if status != 0:
        raise DriverError(f"{what}: {last_line(err) or f'{argv[0]} exited with status {status}'}", **details)
    return out


async def disk_info(qemu_img: str, path: Path, **details: Any) -> DiskInfo:
    """`qemu-img info` of `path` (format probed, no locks taken: the image may be in use).
    Only for files vmplane made; an image from outside goes through `intake` instead."""
    out = await _checked([qemu_img, "info", "-U", "--output=json", str(path)], f"cannot inspect {path.name}", **details)
    try:
        data = json.loads(out)
        return DiskInfo(
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data.get("actual-size", 0)),
            backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
            raw=data,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"qemu-img info of {path.name} gave unexpected output", **details) from exc


async def check_qcow2(qemu_img: str, path: Path, **details: Any) -> None:
    """`qemu-img check`: refuse corrupt qcow2 metadata (leaked clusters are harmless)."""
    status, _out, err = await run_tool([qemu_img, "check", "-U", "-f", "qcow2", str(path)], "qemu-img check", **details)
    if status not in (0, 3):
        raise DriverError(f"qcow2 image {path.name} is corrupt: {last_line(err) or f'qemu-img check status {status}'}", **details)


async def create_overlay(qemu_img: str, base: Path, base_format: str, dest: Path, size: int, **details: Any) -> None:
    """A qcow2 overlay on `base` (never a copy of it) of `size` bytes."""
    await _checked(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(dest), str(size)],
        "cannot create the disk overlay",
        **details,
    )


async def create_blank(qemu_img: str, dest: Path, size: int, **details: Any) -> None:
    await _checked([qemu_img, "create", "-q", "-f", "qcow2", str(dest), str(size)], "cannot create the disk", **details)


async def grow(qemu_img: str, path: Path, size: int, **details: Any) -> None:
    """Grow a qcow2 image of a stopped VM to `size` bytes."""
    await _checked([qemu_img, "resize", "-q", "-f", "qcow2", str(path), str(size)], "cannot grow the disk", **details)


async def to_raw(qemu_img: str, source: Path, dest: Path, **details: Any) -> None:
    """Flatten an image (with its backing chain) into a sparse raw file."""
    await _checked([qemu_img, "convert", "-U", "-O", "raw", str(source), str(dest)], "cannot export the disk", **details)


async def from_raw(qemu_img: str, source: Path, dest: Path, base: Path | None, base_format: str | None, **details: Any) -> None:
    """A qcow2 image of a raw one; on `base` when given, storing only what differs from it."""
    argv = [qemu_img, "convert", "-f", "raw", "-O", "qcow2"]
    if base is not None:
        argv += ["-B", str(base), "-F", str(base_format)]
    await _checked(argv + [str(source), str(dest)], "cannot import the disk", **details)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
