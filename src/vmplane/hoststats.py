"""The host's own CPU and memory use, from /proc (Linux): what a system-status answer reports."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

PROC = Path("/proc")


def _cpu_times(proc: Path = PROC) -> tuple[float, float]:
    """(busy, total) jiffies since boot, from the `cpu` line of /proc/stat."""
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("cpu "):
            values = [float(x) for x in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
            total = sum(values[:8])  # guest time is already counted in user/nice
            return total - idle, total
    raise OSError("/proc/stat has no cpu line")


def mem_percent(proc: Path = PROC) -> float:
    """Memory in use (MemTotal - MemAvailable) as a percentage of MemTotal."""
    info: dict[str, float] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            info[key] = float(parts[0])
    total = info.get("MemTotal", 0.0)
    if total <= 0:
        return 0.0
    available = info.get("MemAvailable", info.get("MemFree", 0.0))
    return round(100.0 * (total - available) / total, 2)


class CpuMeter:
    """CPU use of the whole host between two looks; the first look samples for `window` s."""

    def __init__(self, window: float = 0.2, proc: Path = PROC) -> None:
        self.window = window
        self.proc = proc
        self._last: tuple[float, float, float] | None = None  # (monotonic, busy, total)

    async def percent(self) -> float:
        now = time.monotonic()
        busy, total = _cpu_times(self.proc)
        last = self._last
        if last is None or now - last[0] < 0.05 or total <= last[2]:  # nothing to compare with yet
            await asyncio.sleep(self.window)
            last = (now, busy, total)
            now = time.monotonic()
            busy, total = _cpu_times(self.proc)
        self._last = (now, busy, total)
        return _pct(busy - last[1], total - last[2])


def _pct(busy: float, total: float) -> float:
    return round(max(0.0, min(100.0, 100.0 * busy / total)), 2) if total > 0 else 0.0
