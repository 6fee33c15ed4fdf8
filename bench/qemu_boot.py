"""Boot-latency benchmark (qemu driver): how much the control plane adds to a guest's boot.

    .venv/bin/python bench/qemu_boot.py [--runs 5] [--bulk 10] [--bulk-runs 2] [--bare hand|driver]
                                        [--poll-ms 50] [--bulk-poll-ms MS] [--observe api|file] [--keep]

Prints two ratios (target: both at most 1.10):

  single  (API `POST /api/v1/vms` -> the guest's first line in `GET /vms/{id}/console/log`)
          / (bare `qemu-system-x86_64` spawn -> the same line in its serial file)
  bulk    the same for N guests (default 10) created in one bulk request, against N bare
          QEMU processes spawned together; the time is until the LAST of the N guests has
          printed its first line (the mean over guests is printed too).

"First guest line" is `vmplane-tiny: init starting` (INIT_START_LINE): the tiny kernel boots
with `quiet`, so this line, printed first thing by the guest's /init, is the first line the
guest itself writes on ttyS0. Both sides look for it at the same cadence (--poll-ms, default
50 ms): the API side with one console/log GET per pending VM per tick, the bare side by reading
its serial file per pending guest per tick, so the polling error is the same on both sides.

The polling GETs go through a minimal keep-alive HTTP client (`--client raw`): httpx would cost
this process about as much CPU per request as the server spends answering it, CPU that the
guests (all of the host's CPU in the bulk case) then miss on the API side only.

The bare guest is the same guest: kernel, initrd, append line and base disk are read from the
vm.json the driver wrote for a warm-up VM; each bare guest gets its own qcow2 overlay on that
base disk (created before the clock starts), the same memory/vCPUs, and the same devices:
virtio-blk disk, the NoCloud seed on ide-cd (a copy of the warm-up VM's seed), user-net on
virtio-net, virtio-rng, virtio-serial with the guest-agent port. `--bare hand` (default) writes
that command line by hand with `-serial file:serial.log`; `--bare driver` replays the exact argv
the driver ran (from run.json) minus -qmp and -pidfile.

Runs alternate API and bare (API first in odd rounds, bare first in even ones); the figures are
medians. Before each run it waits (up to --wait-idle s) for the rest of the host to go quiet,
and prints how much CPU other processes used during each run: on a small shared host another
workload moves a TCG boot by more than the overhead measured here, so read the per-pair ratios
and that column before trusting one ratio. Each API run also prints where the time went (POST
to 202, VM directory, disk+seed+vm.json, QEMU spawn, spawn to line, server CPU), and
`--observe file` (a diagnostic) watches the API-created guests' serial.log files directly, to
separate the control plane's cost from the cost of watching through console/log. One cold run of each (first VM of a fresh server, which also imports the template on
the node; cold page cache for QEMU) is done first and printed separately, not counted.

Starts its own `vmplane serve --driver qemu --accel tcg` through bench/common.py (free port,
fresh data dir, the owner API key, no rate limit) with VMPLANE_CPU_OVERCOMMIT=8 unless set (so
N guests fit on a small host); deletes every VM it created, stops every QEMU it started, stops
the server and removes its directories (unless --keep).
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchServer, server  # noqa: E402

from vmplane import procfs  # noqa: E402
from vmplane.images.tiny import INIT_START_LINE  # noqa: E402

TARGET = 1.10
LINE = INIT_START_LINE.encode()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user+system CPU of `pid` and its reaped children (0 if it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = data[data.rindex(")") + 2 :].split()
    return sum(int(x) for x in f[11:15]) / CLK_TCK


def busy_cpu() -> float:
    """CPU seconds the whole host has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fmt_s(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Run:
    """One measured boot of n guests. Times are seconds from t0 (before POST / first spawn)."""

    side: str  # "api" | "bare"
    first_line: list[float]  # per guest
    accepted: float | None = None  # API: POST -> 202
    task_seen: list[float] = field(default_factory=list)  # API: the VM directory appeared (poll)
    defined: list[float] = field(default_factory=list)  # API: vm.json written (mtime)
    spawned: list[float] = field(default_factory=list)  # API: QEMU spawned (qemu.log mtime)
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    qemu_cpu: float = 0.0
    lag: list[float] = field(default_factory=list)  # API: seen in console/log this long after in serial.log
    cpu_to_line: list[float] = field(default_factory=list)  # CPU each guest's QEMU had used when its line was seen
    host_cpu: float = 0.0  # the whole host was busy this many CPU seconds during the run

    @property
    def other_cpu(self) -> float:
        """CPU seconds used during the run by processes that are not part of the measurement
        (another workload on the host; an estimate: short-lived children such as qemu-img
        count only once reaped)."""
        return max(0.0, self.host_cpu - self.server_cpu - self.bench_cpu - self.qemu_cpu)

    @property
    def last(self) -> float:
        return max(self.first_line)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.first_line)


class RawGet:
    """Keep-alive HTTP/1.1 GETs on asyncio streams, for the polling loop only.

    httpx spends about as much CPU per request in this process as the server spends answering
    it; with N TCG guests saturating two cores that is CPU taken from the guests, charged to the
    API side (the bare side's file reads cost nothing). This client costs a small fraction of
    that, so what remains is the server's own cost of answering console/log."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n\r\n"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in range(2):
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
            try:
                return await self._get(conn, path)
            except (asyncio.IncompleteReadError, ConnectionError):
                conn[1].close()
                if not reused or attempt:  # a fresh connection failed: a real error
                    raise
        raise AssertionError("unreachable")

    async def _get(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip().lower() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            body = b"".join(parts)
        else:
            body = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection") == "close":
            writer.close()
        else:
            self.idle.append(conn)
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Ticker:
    """Fixed-cadence polling: tick() sleeps until the next multiple of `interval` from start."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next = time.perf_counter()

    async def tick(self) -> None:
        self.next += self.interval
        now = time.perf_counter()
        if self.next < now:  # fell behind (a slow poll): do not burst to catch up
            self.next = now
        await asyncio.sleep(self.next - now)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        root = Path(args.scratch or tempfile.gettempdir()).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="vmplane-bootbench-", dir=root))
        self.bare_root = self.scratch / "bare"
        self.data: Path | None = None  # the server's data dir (bench/common.py makes it)
        self.vms_dir = Path("/nonexistent")
        self.server_pid = 0
        self.client: httpx.AsyncClient | None = None
        self.raw: RawGet | None = None
        self.bare_procs: list[subprocess.Popen[bytes]] = []
        self.api_vms: set[str] = set()
        self.template_id = ""
        self.boot: dict[str, str] = {}
        self.base_disk = ""
        self.seed_copy = self.scratch / "seed.iso"
        self.driver_argv: list[str] = []
        self.seq = 0

    # -- server ------------------------------------------------------------------------

    async def attach(self, srv: BenchServer) -> None:
        """Use the server bench/common.py started: its client (with the owner key), data dir, pid."""
        self.client, self.data = srv.client, srv.data
        self.raw = RawGet(srv.port, srv.key)
        self.vms_dir = srv.data / "qemu" / "vms"
        marker = str(srv.data).encode()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"serve" in argv and marker in argv:
                    self.server_pid = int(entry.name)
        if not self.server_pid:
            raise SystemExit("cannot find the vmplane serve process")
        items = (await self.client.get("/api/v1/templates", params={"limit": 500})).json()["items"]
        tpl = next((t for t in items if t["name"] == "tiny-linux"), None)
        if tpl is None:
            raise SystemExit("the server offers no tiny-linux template (could it build the tiny image?)")
        self.template_id = tpl["id"]

    def kill_leftovers(self) -> None:
        """VMs outlive the server: kill any QEMU still running from its data dir (ours only)."""
        if self.data is None:
            return
        for pid, argv in procfs.processes_mentioning(str(self.vms_dir) + os.sep):
            if os.path.basename(argv[0]).startswith("qemu-system"):
                procfs.kill(pid)
                print(f"warning: killed leftover QEMU {pid} of a benchmark VM", file=sys.stderr)

    # -- API side ----------------------------------------------------------------------

    async def wait_job(self, job_id: str, timeout: float = 300) -> dict:
        assert self.client
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] not in ("queued", "running"):
                return job
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def api_boot(self, n: int, poll: float, timeout: float) -> Run:
        assert self.client
        client = self.client
        self.seq += 1
        res = {"cpu": self.args.cpu, "ramMb": self.args.ram_mb, "diskGb": self.args.disk_gb}
        specs = [{"name": f"bootbench-{self.seq}-{i}", "templateId": self.template_id, "resources": res} for i in range(n)]
        body: object = specs if n > 1 else specs[0]
        srv_cpu0, bench_cpu0, host0 = cpu_seconds(self.server_pid), self_cpu(), busy_cpu()
        t0_wall = time.time()
        t0 = time.perf_counter()
        r = await client.post("/api/v1/vms", json=body)
        accepted = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        vm_ids: list[str] = r.json()["vmIds"]
        job_id = r.json()["jobId"]
        self.api_vms.update(vm_ids)
        first: dict[str, float] = {}
        cpu_at: dict[str, float] = {}
        seen_dir: dict[str, float] = {}

        async def look(vm_id: str) -> tuple[str, bool, float]:
            if self.args.observe == "file":  # diagnostic: read serial.log directly, as the bare side does
                try:
                    found = LINE in (self.vms_dir / vm_id / "serial.log").read_bytes()
                except FileNotFoundError:
                    found = False
                return vm_id, found, time.perf_counter() - t0
            if self.args.client == "httpx":
                resp = await client.get(f"/api/v1/vms/{vm_id}/console/log")
                return vm_id, resp.status_code == 200 and INIT_START_LINE in resp.text, time.perf_counter() - t0
            assert self.raw
            status, data = await self.raw.get(f"/api/v1/vms/{vm_id}/console/log")
            return vm_id, status == 200 and LINE in data, time.perf_counter() - t0

        in_file: dict[str, float] = {}  # diagnostics: when serial.log itself first held the line
        ticker = Ticker(poll)
        while len(first) < n:
            pending = [v for v in vm_ids if v not in first]
            for v in pending:
                if v not in in_file:
                    with contextlib.suppress(FileNotFoundError):
                        if LINE in (self.vms_dir / v / "serial.log").read_bytes():
                            in_file[v] = time.perf_counter() - t0
            for vm_id, found, t in await asyncio.gather(*(look(v) for v in pending)):
                if found:
                    first[vm_id] = t
                    cpu_at[vm_id] = _qemu_cpu_of(self.vms_dir / vm_id)
            if len(seen_dir) < n:  # diagnostics: when the driver began defining each VM
                now = time.perf_counter() - t0
                with contextlib.suppress(FileNotFoundError):
                    names = os.listdir(self.vms_dir)
                    for v in vm_ids:
                        if v not in seen_dir and any(x == v or x.startswith(f".creating-{v}-") for x in names):
                            seen_dir[v] = now
            if time.perf_counter() - t0 > timeout:
                job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                raise RuntimeError(f"{n - len(first)} API guest(s) printed no first line in {timeout:.0f} s; job {job}")
            if len(first) < n:
                await ticker.tick()
        if self.raw:
            self.raw.close()
        run = Run("api", [first[v] for v in vm_ids], accepted=accepted, cpu_to_line=[cpu_at[v] for v in vm_ids])
        run.lag = [first[v] - in_file.get(v, first[v]) for v in vm_ids]
        run.host_cpu = busy_cpu() - host0
        run.server_cpu = cpu_seconds(self.server_pid) - srv_cpu0
        run.bench_cpu = self_cpu() - bench_cpu0
        for v in vm_ids:
            d = self.vms_dir / v
            run.task_seen.append(seen_dir.get(v, float("nan")))
            run.defined.append(_mtime(d / "vm.json") - t0_wall)
            log = d / "qemu.log"  # created (truncated) just before the spawn
            spawn = _mtime(log) if _size(log) == 0 else _mtime(d / "run.json")
            run.spawned.append(spawn - t0_wall)
            run.qemu_cpu += _qemu_cpu_of(d)
        job = await self.wait_job(job_id)
        if job["state"] != "succeeded":
            raise RuntimeError(f"create job ended {job['state']}: {job}")
        return run

    async def api_cleanup(self) -> None:
        if not self.api_vms or self.client is None:
            return
        ids = sorted(self.api_vms)
        r = await self.client.request("DELETE", "/api/v1/vms", json={"vmIds": ids})
        if r.status_code != 202:
            raise RuntimeError(f"delete: {r.status_code} {r.text}")
        job = await self.wait_job(r.json()["jobId"])
        if job["state"] != "succeeded":
            raise RuntimeError(f"delete job ended {job['state']}: {job}")
        self.api_vms.clear()

    def learn_guest(self, vm_id: str) -> None:
        """Read what the driver booted (vm.json, run.json) so the bare side boots the same."""
        d = self.vms_dir / vm_id
        cfg = json.loads((d / "vm.json").read_text())
        self.boot = cfg["boot"]
        self.base_disk = cfg["templateImage"]
        self.driver_argv = json.loads((d / "run.json").read_text())["argv"]
        shutil.copyfile(d / "seed.iso", self.seed_copy)

    # -- bare side ---------------------------------------------------------------------

    def bare_argv(self, gdir: Path, i: int) -> list[str]:
        disk = gdir / "disk.qcow2"
        if self.args.bare == "driver":
            out, skip = [], False
            a = self.driver_argv
            for j, arg in enumerate(a):
                if skip:
                    skip = False
                    continue
                if arg in ("-qmp", "-pidfile"):
                    skip = True
                    continue
                if j > 0 and a[j - 1] == "-drive" and arg.startswith("file=") and ",id=disk0," in arg:
                    arg = f"file={disk},if=none,id=disk0,format=qcow2,discard=unmap"
                out.append(arg)
            return out
        mac = f"52:54:00:bb:{self.seq % 256:02x}:{i:02x}"
        return [
            "qemu-system-x86_64",
            "-machine", "pc", "-accel", "tcg",
            "-m", str(self.args.ram_mb), "-smp", str(self.args.cpu),
            "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", self.boot["kernel"], "-initrd", self.boot["initrd"], "-append", self.boot["cmdline"],
            "-drive", f"file={disk},if=none,id=disk0,format=qcow2,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk0",
            "-drive", "file=seed.iso,if=none,id=seed0,format=raw,readonly=on,media=cdrom",
            "-device", "ide-cd,drive=seed0,bus=ide.1,unit=0",
            "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=qga0,path=qga.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", "file:serial.log",
        ]  # fmt: skip

    async def bare_boot(self, n: int, poll: float, timeout: float) -> Run:
        self.seq += 1
        shutil.rmtree(self.bare_root, ignore_errors=True)
        gdirs, argvs = [], []
        for i in range(n):  # not timed: the bare side gets its disks for free
            gdir = self.bare_root / f"g{i}"
            gdir.mkdir(parents=True)
            size = self.args.disk_gb << 30
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.base_disk,
                            str(gdir / "disk.qcow2"), str(max(size, 1 << 30))], check=True)  # fmt: skip
            shutil.copyfile(self.seed_copy, gdir / "seed.iso")
            gdirs.append(gdir)
            argvs.append(self.bare_argv(gdir, i))
        serials = [g / "serial.log" for g in gdirs]
        bench_cpu0, srv_cpu0, host0 = self_cpu(), cpu_seconds(self.server_pid), busy_cpu()
        t0 = time.perf_counter()
        for gdir, argv in zip(gdirs, argvs):
            with open(gdir / "qemu.log", "wb") as log:
                self.bare_procs.append(subprocess.Popen(
                    argv, cwd=gdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                ))  # fmt: skip
        procs = self.bare_procs[-n:]
        first: dict[int, float] = {}
        cpu_at: dict[int, float] = {}
        ticker = Ticker(poll)
        while len(first) < n:
            for i in range(n):
                if i in first:
                    continue
                try:
                    found = LINE in serials[i].read_bytes()
                except FileNotFoundError:
                    found = False
                if found:
                    first[i] = time.perf_counter() - t0
                    cpu_at[i] = cpu_seconds(procs[i].pid)
                elif procs[i].poll() is not None:
                    raise RuntimeError(f"bare QEMU {i} exited {procs[i].returncode}: {(gdirs[i] / 'qemu.log').read_text()[-500:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{n - len(first)} bare guest(s) printed no first line in {timeout:.0f} s")
            if len(first) < n:
                await ticker.tick()
        run = Run("bare", [first[i] for i in range(n)], cpu_to_line=[cpu_at[i] for i in range(n)])
        run.host_cpu = busy_cpu() - host0
        run.server_cpu = cpu_seconds(self.server_pid) - srv_cpu0
        run.bench_cpu = self_cpu() - bench_cpu0
        run.qemu_cpu = sum(cpu_seconds(p.pid) for p in procs)
        return run

    def bare_cleanup(self) -> None:
        for p in self.bare_procs:
            if p.poll() is None:
                p.terminate()
        for p in self.bare_procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.bare_procs.clear()
        shutil.rmtree(self.bare_root, ignore_errors=True)

    # -- scenarios ---------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait (up to --wait-idle s) until the rest of the host uses less than --idle-cores:
        another workload on this small host moves a TCG boot by far more than the overhead
        measured here."""
        deadline = time.monotonic() + self.args.wait_idle
        while True:
            h0, s0, b0 = busy_cpu(), cpu_seconds(self.server_pid), self_cpu()
            await asyncio.sleep(0.5)
            other = (busy_cpu() - h0) - (cpu_seconds(self.server_pid) - s0) - (self_cpu() - b0)
            if other / 0.5 < self.args.idle_cores or time.monotonic() > deadline:
                return

    async def one(self, side: str, n: int, poll: float, timeout: float) -> Run:
        await self.wait_idle()
        try:
            if side == "api":
                return await self.api_boot(n, poll, timeout)
            return await self.bare_boot(n, poll, timeout)
        finally:
            await self.api_cleanup()
            self.bare_cleanup()
            await asyncio.sleep(self.args.settle)  # let deletes, exits and disk writes finish

    async def scenario(self, n: int, runs: int, poll: float, timeout: float) -> tuple[list[Run], list[Run]]:
        api, bare = [], []
        for i in range(runs):
            for side in (("api", "bare") if i % 2 == 0 else ("bare", "api")):
                r = await self.one(side, n, poll, timeout)
                (api if side == "api" else bare).append(r)
                what = f"last {r.last:.2f} s, mean {r.mean:.2f} s" if n > 1 else f"{r.last:.2f} s"
                print(f"    run {i + 1} {side:4}: {what}  (other load on the host: {r.other_cpu:.1f} CPU s)", flush=True)
        return api, bare


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return float("nan")


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def _qemu_cpu_of(vm_dir: Path) -> float:
    try:
        pid = int(json.loads((vm_dir / "run.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0.0
    return cpu_seconds(pid)


def report_noise(api: list[Run], bare: list[Run]) -> None:
    pairs = [a.last / b.last for a, b in zip(api, bare)]
    print(f"  per-pair ratios (API run / bare run of the same round): {' '.join(f'{x:.2f}' for x in pairs)} "
          f"(median {med(pairs):.3f}); other load on the host per run (median): "
          f"API {med([r.other_cpu for r in api]):.1f} CPU s, bare {med([r.other_cpu for r in bare]):.1f} CPU s")  # fmt: skip


def report_phases(api: list[Run], bare: list[Run], n: int, poll: float) -> None:
    """Where the API's time goes (medians over runs; per run the last guest for n > 1)."""

    def pick(r: Run, xs: list[float]) -> float:
        return max(xs) if n > 1 else xs[0]

    acc = med([r.accepted or 0.0 for r in api]) * 1000
    seen = med([pick(r, r.task_seen) for r in api]) * 1000
    defined = med([pick(r, r.defined) for r in api]) * 1000
    spawned = med([pick(r, r.spawned) for r in api]) * 1000
    # spawn -> first line, per guest, averaged over the guests of a run (bare: spawn is t0)
    api_sl = med([statistics.fmean(line - sp for line, sp in zip(r.first_line, r.spawned)) for r in api])
    bare_sl = med([r.mean for r in bare])
    who = "last guest: " if n > 1 else ""
    print(f"  API path ({who}median): POST->202 {acc:.0f} ms; VM dir appears (polled, +0..{poll * 1000:.0f} ms) {seen:.0f} ms; "
          f"disk+seed+vm.json written {defined:.0f} ms; QEMU spawned {spawned:.0f} ms")  # fmt: skip
    print(f"  spawn -> first line ({'mean per guest, ' if n > 1 else ''}median): API {api_sl:.2f} s vs bare {bare_sl:.2f} s "
          f"(QEMU-side difference {api_sl - bare_sl:+.2f} s)")  # fmt: skip
    if api[0].lag:
        print(f"  console/log lag behind serial.log (per guest; median over runs): mean "
              f"{med([statistics.fmean(r.lag) for r in api]) * 1000:.0f} ms, max {med([max(r.lag) for r in api]) * 1000:.0f} ms "
              f"(the file is checked once per tick just before the GETs, so up to one tick of it is polling)")  # fmt: skip
    if n > 1:
        first_sp = med([min(r.spawned) for r in api]) * 1000
        print(f"  API spawns spread: first QEMU at {first_sp:.0f} ms, last at {spawned:.0f} ms after POST")
    print(f"  CPU per run (median): server {med([r.server_cpu for r in api]):.2f} s, "
          f"bench client {med([r.bench_cpu for r in api]):.2f} s (bare: {med([r.bench_cpu for r in bare]):.2f} s), "
          f"QEMU total API {med([r.qemu_cpu for r in api]):.1f} s vs bare {med([r.qemu_cpu for r in bare]):.1f} s")  # fmt: skip
    print(f"  QEMU CPU a guest had used when its first line was seen (mean per guest, median): "
          f"API {med([statistics.fmean(r.cpu_to_line) for r in api]):.2f} s vs bare "
          f"{med([statistics.fmean(r.cpu_to_line) for r in bare]):.2f} s")


async def measure(bench: Bench, args: argparse.Namespace, results: dict[str, float]) -> None:
    poll = args.poll_ms / 1000
    print(f"qemu boot bench: TCG, {args.cpu} vCPU, {args.ram_mb} MB, {args.disk_gb} GB overlay; bare = {args.bare}; "
          f"first guest line = {INIT_START_LINE!r} (first line /init prints; kernel is quiet); "
          f"both sides polled every {args.poll_ms} ms; API side observed through {f'GET console/log ({args.client} client)' if args.observe == 'api' else 'serial.log files (diagnostic, not the requirement)'}", flush=True)  # fmt: skip

    # cold runs (not counted): the first API create also imports the template on the node
    await bench.wait_idle()
    cold_api = await bench.api_boot(1, poll, 180)
    bench.learn_guest(next(iter(bench.api_vms)))
    await bench.api_cleanup()
    await asyncio.sleep(args.settle)
    cold_bare = await bench.one("bare", 1, poll, 180)
    print(f"cold, not counted: API {cold_api.last:.2f} s, bare {cold_bare.last:.2f} s", flush=True)

    if args.runs > 0:
        print(f"single guest, {args.runs} run(s) per side, alternating:", flush=True)
        api, bare = await bench.scenario(1, args.runs, poll, 180)
        a, b = med([r.last for r in api]), med([r.last for r in bare])
        results["single"] = a / b
        print(f"  API  POST -> first line:  {fmt_s([r.last for r in api])} s  (median {a:.2f} s)")
        print(f"  bare spawn -> first line: {fmt_s([r.last for r in bare])} s  (median {b:.2f} s)")
        report_phases(api, bare, 1, poll)
        report_noise(api, bare)
        print(f"RATIO single guest: {a / b:.3f} (API {a:.2f} s / bare {b:.2f} s; target <= {TARGET:.2f}) "
              f"{'OK' if a / b <= TARGET else 'OVER TARGET'}", flush=True)  # fmt: skip

    if args.bulk > 0 and args.bulk_runs > 0:
        n = args.bulk
        bulk_poll = (args.bulk_poll_ms or args.poll_ms) / 1000
        print(f"{n} guests, {args.bulk_runs} run(s) per side, alternating (one bulk POST vs {n} QEMUs spawned together; "
              f"polled every {bulk_poll * 1000:.0f} ms):", flush=True)  # fmt: skip
        api, bare = await bench.scenario(n, args.bulk_runs, bulk_poll, 600)
        a, b = med([r.last for r in api]), med([r.last for r in bare])
        am, bm = med([r.mean for r in api]), med([r.mean for r in bare])
        results["bulk"] = a / b
        print(f"  API  POST -> all {n} first lines:  {fmt_s([r.last for r in api])} s  (median {a:.2f} s; mean per guest {am:.2f} s)")
        print(f"  bare spawn -> all {n} first lines: {fmt_s([r.last for r in bare])} s  (median {b:.2f} s; mean per guest {bm:.2f} s)")
        report_phases(api, bare, n, bulk_poll)
        report_noise(api, bare)
        print(f"  mean-per-guest ratio: {am / bm:.3f}")
        print(f"RATIO {n} guests (last first line): {a / b:.3f} (API {a:.2f} s / bare {b:.2f} s; target <= {TARGET:.2f}) "
              f"{'OK' if a / b <= TARGET else 'OVER TARGET'}", flush=True)  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="single-guest runs per side")
    ap.add_argument("--bulk", type=int, default=10, help="guests in the bulk scenario (0 skips it)")
    ap.add_argument("--bulk-runs", type=int, default=2, help="bulk runs per side")
    ap.add_argument("--poll-ms", type=int, default=50, help="polling period, both sides")
    ap.add_argument("--bulk-poll-ms", type=int, default=250,
                    help="polling period in the bulk scenario, both sides (default 250): each console/log GET "
                         "costs ~1 ms of server and ~1 ms of client CPU, so 10 guests polled every 50 ms would "
                         "spend a few tenths of a core watching — CPU the guests then lack — which measures the "
                         "watching, not the control plane (±250 ms on a ~16 s boot is ±1.5 %)")  # fmt: skip
    ap.add_argument("--bare", choices=("hand", "driver"), default="hand",
                    help="bare command: written by hand with -serial file:, or the driver's argv minus -qmp/-pidfile")  # fmt: skip
    ap.add_argument("--observe", choices=("api", "file"), default="api",
                    help="how the API side sees the first line: GET console/log (the requirement), or, to tell the "
                         "control plane's cost from the cost of watching through it, by reading the VM's serial.log "
                         "in the server's data dir like the bare side does")  # fmt: skip
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="HTTP client of the console/log polling: a minimal keep-alive one (default), or httpx, "
                         "which costs ~1 ms of this process's CPU per request")  # fmt: skip
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--ram-mb", type=int, default=256)
    ap.add_argument("--disk-gb", type=int, default=2)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of quiet between runs")
    ap.add_argument("--wait-idle", type=float, default=20.0,
                    help="before each run, wait up to this long for other processes to quiet down")  # fmt: skip
    ap.add_argument("--idle-cores", type=float, default=0.25, help="'quiet' means other processes use less than this")
    ap.add_argument("--scratch", default=None, help="where to make the bare guests' work directory (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the bare guests' work directory and the server's data dir")
    args = ap.parse_args()

    bench = Bench(args)
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    results: dict[str, float] = {}
    # build (or find) the tiny image first: the server would build it before it is ready
    from vmplane.config import Settings
    from vmplane.images import build_tiny_image, tiny_dir

    await asyncio.to_thread(build_tiny_image, tiny_dir(Settings(driver="qemu").resolved_image_cache()))
    env = {"VMPLANE_CPU_OVERCOMMIT": os.environ.get("VMPLANE_CPU_OVERCOMMIT", "8")}  # N guests on a small host
    try:
        async with server(["--driver", "qemu", "--accel", "tcg"], env=env, prefix="vmplane-bootbench-") as srv:
            await bench.attach(srv)
            try:
                await measure(bench, args, results)
            finally:
                with contextlib.suppress(Exception):
                    await bench.api_cleanup()
                bench.bare_cleanup()
    finally:
        bench.bare_cleanup()
        bench.kill_leftovers()
        if args.keep:
            print(f"kept: {bench.scratch} (bare guests), {bench.data} (server data dir)", file=sys.stderr)
        else:
            shutil.rmtree(bench.scratch, ignore_errors=True)
            if bench.data is not None:
                shutil.rmtree(bench.data, ignore_errors=True)
    if results:
        print("summary: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()) + f" (target <= {TARGET:.2f})")


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
