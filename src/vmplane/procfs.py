"""Processes vmplane starts detached (QEMU, dnsmasq), seen through /proc: start them,
recognise them, measure them. Used by the qemu driver and by host networking.

A process started by this process is our child until this process exits; `reap` collects its
exit status so it never lingers as a zombie (a zombie counts as dead everywhere here).
"""

import os
import signal
import subprocess
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this process started (kept so their exit status can be collected)."""
_exit_status: dict[int, int] = {}
"""Exit status of reaped children: >= 0 an exit code, < 0 the signal that killed it."""


def spawn(argv: list[str], cwd: Path, log: Path) -> int:
    """Start `argv` in its own session with stdin from /dev/null and stdout/stderr to `log`
    (truncated). Nothing ties it to us: it outlives this process. Returns its pid."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def reap(pid: int) -> int | None:
    """Collect the exit status of `pid` if it is our exited child. Returns the status of a
    child we reaped (now or before), None for a running child or a process not ours."""
    proc = _children.get(pid)
    if proc is not None:
        status = proc.poll()
        if status is None:
            return None
        del _children[pid]
        _exit_status[pid] = status
        while len(_exit_status) > 1000:
            del _exit_status[next(iter(_exit_status))]
        return status
    return _exit_status.get(pid)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def cmdline(pid: int) -> list[str]:
    try:
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in data.split(b"\0") if a]


def is_ours(pid: int, marker: str) -> bool:
    """True if `pid` is a live (not zombie) process whose command line mentions `marker`
    (the VM directory): a recycled pid of some other process does not count."""
    if pid in _children:
        if reap(pid) is not None:
            return False
        fields = _stat_fields(pid)
        if fields is None:
            return False
        argv = cmdline(pid)
        if fields[0] in ("Z", "X") or not argv:
            # exiting: a zombie leader whose other threads are still going away, or with its
            # memory already released; as our child it cannot be recycled, its status comes soon
            return True
        return any(marker in arg for arg in argv)
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return any(marker in arg for arg in cmdline(pid))


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def start_time(pid: int) -> float | None:
    """When `pid` started, in epoch seconds (stable: the same answer for every caller)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return boot_time() + int(fields[19]) / CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) `pid` has used."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def processes_mentioning(marker: str) -> list[tuple[int, list[str]]]:
    """Live processes whose command line mentions `marker`, with their argv."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        argv = cmdline(pid)
        if argv and any(marker in a for a in argv):
            fields = _stat_fields(pid)
            if fields is not None and fields[0] not in ("Z", "X"):
                found.append((pid, argv))
    return found
