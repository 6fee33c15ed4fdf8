"""Disk images through `qemu-img`: inspect, create overlays and blank disks, grow.

Every qemu-img runs through `run_tool`, as the unprivileged QEMU user when vmplane is root
(see `confine`), handed exactly the files it works on; an image's backing file is given to
it explicitly (a `json:` image spec) where it needs one, and left closed (`"backing": null`,
`create -u`) where it does not, so it never follows a name written inside an image."""

import asyncio
import contextlib
import fcntl
import json
import os
import re
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DriverError
from . import confine

SUPPORTED_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True, slots=True)
class DiskInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    raw: dict[str, Any]


async def run_tool(
    argv: list[str],
    what: str,
    timeout: float = 120,
    on_stdout: Callable[[bytes], Awaitable[None]] | None = None,
    *,
    reads: Sequence[Path] = (),
    writes: Sequence[Path] = (),
    cwd: Path | None = None,
    **details: Any,
) -> tuple[int, str, str]:
    """Run a disk tool (argv, no shell); returns (status, stdout, stderr). `on_stdout`, if
    given, is handed stdout as it comes (a progress meter) instead of returning it.

    The one runner of qemu-img: confined (see `confine`), the tool runs as the QEMU user and
    reaches the files it may use only as `/dev/fd/N`, descriptors opened here. `reads` and
    `writes` name those files; each argv element that is one of them, and each `filename` of
    a `json:` element that is, is replaced by its descriptor. For the run, a file read is
    made readable by the user's group, a file written is owned by the user (created 0600 if
    missing); both get their owner and mode back afterwards (unless another process is using
    the file at that moment: it then keeps the grant, and the data dir's tightening at the next
    start takes it back). `cwd`: the tool's working directory, which the user's group may then
    search (not list) for the run, so that names relative to it reach files in `reads` there
    (a VMDK descriptor and its extents, named relative to it). Anything else the tool tries to
    open by path (a backing file named in an image, a host file) is out of its reach: the data
    dir is 0700 root. Not confined, paths are passed as they are.
    """
    user = confine.current()
    fds: dict[str, int] = {}
    held: list[_Held] = []
    names: dict[str, str] = {}
    try:
        if user is not None:
            for path, kind in [*((p, "read") for p in reads if p not in writes), *((p, "write") for p in writes),
                               *(((cwd, "search"),) if cwd is not None else ())]:  # fmt: skip
                h = _Held(Path(path), kind, user, what, details)
                held.append(h)
                if kind != "search":
                    fds[str(path)] = h.fd
                    names[f"/dev/fd/{h.fd}"] = str(path)
            argv = [_substitute(a, {k: f"/dev/fd/{v}" for k, v in fds.items()}) for a in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *(argv if user is None else user.wrap(argv)), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=cwd if cwd is not None else ("/" if user is not None else None),
                pass_fds=() if user is None else list(fds.values()),
            )  # fmt: skip
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
    finally:
        for h in reversed(held):
            h.release()
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if names:  # what it says names the files, not the descriptors (in stdout as inside a JSON string)
        stderr = _FD_PATH.sub(lambda m: names.get(m.group(0), m.group(0)), stderr)
        stdout = _FD_PATH.sub(lambda m: json.dumps(names[m.group(0)])[1:-1] if m.group(0) in names else m.group(0), stdout)
    return proc.returncode or 0, stdout, stderr


_FD_PATH = re.compile(r"/dev/fd/\d+")


def _substitute(arg: str, fds: dict[str, str]) -> str:
    if arg in fds:
        return fds[arg]
    if arg.startswith("json:"):
        try:
            spec = json.loads(arg[5:])
        except ValueError:
            return arg
        return "json:" + json.dumps(_sub_filenames(spec, fds))
    return arg


def _sub_filenames(node: Any, fds: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (fds.get(v, v) if k == "filename" and isinstance(v, str) else _sub_filenames(v, fds)) for k, v in node.items()}
    if isinstance(node, list):
        return [_sub_filenames(v, fds) for v in node]
    return node


@dataclass
class _Grant:
    """The access a file has been given for confined tools: its owner and mode before, and
    how many runs read and write it (by inode: concurrent runs reading one base image share
    one grant, and the last one gives the file its owner and mode back)."""

    original: tuple[int, int, int]
    readers: int = 0
    writers: int = 0


_grants: dict[tuple[int, int], _Grant] = {}


class _Held:
    """One file opened for one run of a confined tool."""

    def __init__(self, path: Path, kind: str, user: confine.QemuUser, what: str, details: dict[str, Any]) -> None:
        """`kind`: "read", "write" (the user owns it for the run) or "search" (a directory)."""
        write = kind == "write"
        flags = {"read": os.O_RDONLY, "write": os.O_RDWR | os.O_CREAT, "search": os.O_RDONLY | os.O_DIRECTORY}[kind]
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise DriverError(f"{what}: {path.name}: {exc.strerror}", **details) from exc
        self.write = write
        bit = stat.S_IXGRP if kind == "search" else stat.S_IRGRP
        # shared while a run uses the file, so that another process (an agent beside the
        # server, using the same base image) never has its access taken back mid-run: the
        # last one out (LOCK_EX granted) restores the mode, others leave it
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        st = os.fstat(self.fd)
        self.key = (st.st_dev, st.st_ino)
        grant = _grants.get(self.key) or _Grant((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        try:
            if write and grant.writers == 0:
                os.fchown(self.fd, user.uid, user.gid)
            elif not write and grant.readers == grant.writers == 0 and not _granted(st, user, bit):
                os.fchown(self.fd, -1, user.gid)
                os.fchmod(self.fd, stat.S_IMODE(st.st_mode) | bit)
        except OSError as exc:
            os.close(self.fd)
            raise DriverError(f"{what}: cannot hand {path.name} to {user.name}: {exc.strerror}", **details) from exc
        _grants[self.key] = grant
        if write:
            grant.writers += 1
        else:
            grant.readers += 1

    def release(self) -> None:
        grant = _grants[self.key]
        if self.write:
            grant.writers -= 1
        else:
            grant.readers -= 1
        if grant.readers == grant.writers == 0:
            del _grants[self.key]
            uid, gid, mode = grant.original
            with contextlib.suppress(OSError):  # (BlockingIOError: another process uses it now)
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fchown(self.fd, uid, gid)
                os.fchmod(self.fd, mode)
        os.close(self.fd)


def _granted(st: os.stat_result, user: confine.QemuUser, group_bit: int) -> bool:
    """Whether `user` has the access `group_bit` (S_IRGRP, S_IXGRP) stands for already."""
    user_bit = group_bit << 3
    return (st.st_uid == user.uid and bool(st.st_mode & user_bit)) or (st.st_gid == user.gid and bool(st.st_mode & group_bit))


async def _checked(argv: list[str], what: str, *, reads: Sequence[Path] = (), writes: Sequence[Path] = (), **details: Any) -> str:
    status, out, err = await run_tool(argv, what, reads=reads, writes=writes, **details)
    if status != 0:
        raise DriverError(f"{what}: {last_line(err) or f'{argv[0]} exited with status {status}'}", **details)
    return out


def top_only(path: Path) -> str:
    """A qcow2 image as qemu-img opens it without its backing file (check, resize: the top
    layer is all they touch)."""
    return "json:" + json.dumps({"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(path)}})


async def disk_info(qemu_img: str, path: Path, **details: Any) -> DiskInfo:
    """`qemu-img info` of `path` (format probed, no locks taken: the image may be in use;
    its backing file, if any, is named, not opened). Only for files vmplane made; an image
    from outside goes through `intake` instead."""
    out = await _checked([qemu_img, "info", "-U", "--output=json", str(path)], f"cannot inspect {path.name}", reads=[path], **details)
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


async def chain_spec(qemu_img: str, path: Path, allowed: Sequence[Path], **details: Any) -> tuple[str, list[Path]]:
    """`path` with its whole backing chain as one `json:` image spec (each backing file named
    explicitly, so qemu-img is handed it rather than following the name inside the image),
    and the files it reads. A backing file must be one of `allowed` (what vmplane itself put
    there, such as the VM's template image): the name inside an image is data a guest's QEMU
    could have rewritten, and vmplane opens these files as root."""
    files: list[Path] = []
    spec: dict[str, Any] | None = None
    cursor: dict[str, Any] | None = None
    current: Path | None = path
    while current is not None:
        if len(files) >= 16 or current in files:
            raise DriverError(f"{path.name} has a backing chain longer than 16 or looping", **details)
        info = await disk_info(qemu_img, current, **details)
        node: dict[str, Any] = {"driver": info.format, "file": {"driver": "file", "filename": str(current)}}
        files.append(current)
        nxt = info.backing_file
        if nxt is not None and (nxt.startswith("json:") or not Path(nxt).is_absolute() or Path(nxt) not in {Path(p) for p in allowed}):
            raise DriverError(f"{path.name} names a backing file vmplane does not follow ({nxt})", **details)
        if info.format == "qcow2" and nxt is None:
            node["backing"] = None
        if cursor is None:
            spec = node
        else:
            cursor["backing"] = node
        cursor = node
        current = Path(nxt) if nxt else None
    return "json:" + json.dumps(spec), files


async def check_qcow2(qemu_img: str, path: Path, **details: Any) -> None:
    """`qemu-img check`: refuse corrupt qcow2 metadata (leaked clusters are harmless)."""
    status, _out, err = await run_tool([qemu_img, "check", "-U", top_only(path)], "qemu-img check", reads=[path], **details)
    if status not in (0, 3):
        raise DriverError(f"qcow2 image {path.name} is corrupt: {last_line(err) or f'qemu-img check status {status}'}", **details)


async def create_overlay(qemu_img: str, base: Path, base_format: str, dest: Path, size: int, **details: Any) -> None:
    """A qcow2 overlay on `base` (never a copy of it) of `size` bytes. The base is named in
    the overlay, not opened (`-u`): the caller has inspected it already."""
    await _checked(
        [qemu_img, "create", "-q", "-f", "qcow2", "-u", "-F", base_format, "-b", str(base), str(dest), str(size)],
        "cannot create the disk overlay",
        writes=[dest],
        **details,
    )


async def create_blank(qemu_img: str, dest: Path, size: int, **details: Any) -> None:
    await _checked([qemu_img, "create", "-q", "-f", "qcow2", str(dest), str(size)], "cannot create the disk", writes=[dest], **details)


async def grow(qemu_img: str, path: Path, size: int, **details: Any) -> None:
    """Grow a qcow2 image of a stopped VM to `size` bytes."""
    await _checked([qemu_img, "resize", "-q", top_only(path), str(size)], "cannot grow the disk", writes=[path], **details)


async def to_raw(qemu_img: str, source: Path, dest: Path, allowed: Sequence[Path] = (), **details: Any) -> None:
    """Flatten an image (with its backing chain, whose files must be among `allowed`) into a
    sparse raw file."""
    spec, files = await chain_spec(qemu_img, source, allowed, **details)
    await _checked([qemu_img, "convert", "-U", "-O", "raw", spec, str(dest)], "cannot export the disk", reads=files, writes=[dest], **details)


async def from_raw(qemu_img: str, source: Path, dest: Path, base: Path | None, base_format: str | None, **details: Any) -> None:
    """A qcow2 image of a raw one; on `base` when given (the overlay names it; every block of
    the raw image is written into it)."""
    if base is None:
        await _checked([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(source), str(dest)], "cannot import the disk", reads=[source], writes=[dest], **details)
        return
    await create_overlay(qemu_img, base, str(base_format), dest, source.stat().st_size, **details)
    target = {"driver": "qcow2", "file": {"driver": "file", "filename": str(dest)},
              "backing": {"driver": str(base_format), "file": {"driver": "file", "filename": str(base)}}}  # fmt: skip
    await _checked(
        [qemu_img, "convert", "-n", "-f", "raw", "-O", "qcow2", str(source), "json:" + json.dumps(target)],
        "cannot import the disk", reads=[source, base], writes=[dest], **details,
    )  # fmt: skip


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
