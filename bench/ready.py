"""Readiness benchmark (qemu driver): create → `guestReady` through vmplane, beside a bare QEMU
boot of the same image to the same point, per image, as a ratio.

    .venv/bin/python bench/ready.py [--image tiny-linux|debian-12 ...] [--runs N] [--accel tcg|kvm]
                                    [--port P] [--timeout S] [--bare-poll-ms MS] [--wait-idle S] [--keep]

For each image (tiny-linux, then debian-12 when the image cache holds it):

  vmplane  `POST /api/v1/vms` (an SSH key; for debian-12 also user-data, as a user would give)
           → the answer of `GET /api/v1/vms/{id}?waitReady=300` that says `guestReady: true`
           (the long-poll: no polling by the client).
  bare     `qemu-system-x86_64` started by hand with the same shape — same accel, vCPUs, RAM,
           a qcow2 overlay on the same base image (made before the clock starts), the same
           kernel boot (tiny) or disk boot (debian), the NoCloud seed vmplane wrote for the
           same request (copied), user-mode virtio-net, virtio-rng, the guest agent on
           virtio-serial — → the guest agent's first answer to `guest-ping`, then → cloud-init
           done: `/run/cloud-init/result.json` exists (`guest-file-open` through the agent every
           --bare-poll-ms, no process started in the guest). That is what `guestReady` means:
           the agent answers and cloud-init is done (the tiny guest writes the same file when
           its boot is complete). The bare side talks to the agent with vmplane's agent client
           (`drivers/qemu/agent.py`, a socket client), never through the driver.

Prints per run the time to ready of each side, where the vmplane side's time went (POST → 202,
→ `vm.running`, → `vm.guest_ready` as the server's events stamp them, → the client's answer),
the first console line that says the boot is done on both sides (`vmplane-tiny: boot
complete`; cloud-init's `Cloud-init v. … finished at`), the CPU the guest's QEMU had used by
then, the load average and the CPU other processes used during the run; then per image the
medians and the ratio vmplane ÷ bare. Runs alternate (vmplane first in odd rounds, bare first
in even ones); `--runs` defaults to 3 for tiny-linux and 1 for debian-12 (minutes a boot under
TCG). The VM of each vmplane run is deleted before the next run. Before each run it waits (up
to --wait-idle s) for other processes to use less than --idle-cores: read a ratio beside the
"other processes" CPU of its two runs.

Starts its own `vmplane serve --driver qemu` (bench/common.py: a fresh data dir; the port from
--port, else a free one; PYTHONPATH set to this tree's src, so this tree's code serves), which
registers tiny-linux itself; debian-12 is registered with `vmplane image build debian-12` (the
project's command: the image comes from ~/.cache/vmplane/images, which it builds there if
absent only with --build). A warm-up VM per image (`start: false`) imports the template on the
node and tells the bare side the base image, kernel boot and seed; it is deleted again. Kills
any QEMU left under its directories, stops the server and removes its directories.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchServer, server  # noqa: E402
from qemu_boot import busy_cpu, cpu_seconds  # noqa: E402

from vmplane import procfs  # noqa: E402
from vmplane.config import Settings  # noqa: E402
from vmplane.drivers.qemu.agent import AgentError, GuestAgent  # noqa: E402
from vmplane.drivers.qemu.cmdline import GUEST_AGENT_PORT  # noqa: E402
from vmplane.drivers.qemu.images import create_overlay, disk_info  # noqa: E402
from vmplane.drivers.qemu.readiness import CLOUD_INIT_RESULT  # noqa: E402
from vmplane.images import build_tiny_image, tiny_dir  # noqa: E402
from vmplane.images.debian import debian_image_path  # noqa: E402
from vmplane.images.debian_recipe import RECIPES  # noqa: E402
from vmplane.images.tiny import BOOT_COMPLETE_LINE  # noqa: E402

USER_DATA = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo from-user-data > /var/tmp/vmplane-marker']\n"


@dataclass(frozen=True)
class Image:
    template: str
    runs: int
    resources: dict[str, int]
    done_line: bytes  # the console line that says the guest's boot is complete (a diagnostic)
    user_data: str | None = None


IMAGES = {
    "tiny-linux": Image("tiny-linux", 3, {"cpu": 1, "ramMb": 256, "diskGb": 2}, BOOT_COMPLETE_LINE.encode()),
    "debian-12": Image("debian-12", 1, {"cpu": 1, "ramMb": 1024, "diskGb": 4}, b" finished at ", USER_DATA),
}


@dataclass
class Run:
    side: str
    ready: float  # seconds from the start (POST sent / QEMU spawned) to ready
    done_line: float | None = None  # when the console showed the boot complete
    qemu_cpu: float = 0.0  # CPU seconds the guest's QEMU had used when it was ready
    other_cpu: float = 0.0  # CPU seconds other processes on the host used during the run
    load: float = 0.0  # 1-minute load average when the run began
    phases: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{self.side:7} ready {self.ready:7.2f} s"] + [f"{k} {v:.2f}" for k, v in self.phases.items()]
        if self.done_line is not None:
            parts.append(f"console 'done' {self.done_line:.2f}")
        parts.append(f"QEMU CPU {self.qemu_cpu:.1f} s; load {self.load:.2f}, other processes {self.other_cpu:.1f} CPU s")
        return "; ".join(parts)


async def watch_console(path: Path, marker: bytes, t0: float, every: float) -> float:
    """Seconds from t0 until `marker` shows in the serial log at `path` (read every `every` s)."""
    while True:
        with contextlib.suppress(FileNotFoundError):
            if marker in path.read_bytes():
                return time.perf_counter() - t0
        await asyncio.sleep(every)


async def console_line(watch: "asyncio.Task[float]") -> float | None:
    """The watcher's answer; the guest prints its line just after writing the file ready
    looks for, so give it two seconds more (None: not seen by then)."""
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(asyncio.shield(watch), 2.0)
    return None


def kill_qemus_under(root: Path) -> None:
    """Any QEMU whose command line names a path under `root` (ours only)."""
    for pid, argv in procfs.processes_mentioning(str(root)):
        if os.path.basename(argv[0]).startswith("qemu-system"):
            procfs.kill(pid)
            print(f"warning: killed leftover QEMU {pid}", file=sys.stderr)


class Bench:
    def __init__(self, args: argparse.Namespace, srv: BenchServer, scratch: Path) -> None:
        self.args, self.srv, self.client, self.scratch = args, srv, srv.client, scratch
        self.vms_dir = srv.data / "qemu" / "vms"
        self.key = scratch / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(self.key)], check=True)
        self.pub = self.key.with_suffix(".pub").read_text().strip()
        self.seq = 0

    async def wait_job(self, job_id: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] == "succeeded":
                return
            if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error') or job}")
            await asyncio.sleep(0.2)

    async def delete_vm(self, vm_id: str) -> None:
        r = await self.client.delete(f"/api/v1/vms/{vm_id}")
        if r.status_code != 202:
            raise RuntimeError(f"delete {vm_id}: {r.status_code} {r.text}")
        await self.wait_job(r.json()["jobId"])

    def body(self, image: Image, template_id: str, name: str) -> dict[str, object]:
        body: dict[str, object] = {"name": name, "templateId": template_id, "resources": image.resources, "sshKeys": [self.pub]}
        if image.user_data:
            body["cloudInit"] = {"userData": image.user_data}
        return body

    async def template(self, image: Image) -> str | None:
        """The template's id on the server (debian-12: registered by the project's command)."""
        if image.template in RECIPES:
            cache = Settings(driver="qemu").resolved_image_cache()
            if not self.args.build and not debian_image_path(cache, RECIPES[image.template]).is_file():
                print(f"{image.template}: not in the image cache {cache}; skipped (build it with "
                      f"`vmplane image build {image.template} --no-register`, or pass --build)", flush=True)  # fmt: skip
                return None
            env = {**os.environ, "VMPLANE_URL": self.srv.url, "VMPLANE_API_KEY": self.srv.key, "PYTHONPATH": str(SRC)}
            cmd = [sys.executable, "-m", "vmplane.cli.main", "image", "build", image.template]
            out = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"vmplane image build {image.template}: {out.stdout}{out.stderr}")
        items = (await self.client.get("/api/v1/templates", params={"limit": 500})).json()["items"]
        tpl = next((t for t in items if t["name"] == image.template), None)
        if tpl is None:
            raise RuntimeError(f"the server has no template {image.template}")
        return str(tpl["id"])

    async def warm_up(self, image: Image, template_id: str, gdir: Path) -> dict[str, object]:
        """A VM defined and not started: the node imports the template, and its vm.json and
        seed tell the bare side what to boot. Deleted again."""
        r = await self.client.post("/api/v1/vms", json={**self.body(image, template_id, "ready-warm-up"), "start": False})
        if r.status_code != 202:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        await self.wait_job(r.json()["jobId"])
        vm_id = r.json()["vmIds"][0]
        cfg: dict[str, object] = json.loads((self.vms_dir / vm_id / "vm.json").read_text())
        shutil.copyfile(self.vms_dir / vm_id / "seed.iso", gdir / "seed.iso")
        await self.delete_vm(vm_id)
        return cfg

    async def vmplane_run(self, image: Image, template_id: str) -> Run:
        self.seq += 1
        load = os.getloadavg()[0]
        host0, srv0 = busy_cpu(), cpu_seconds(self.srv.pid)
        t0_wall, t0 = time.time(), time.perf_counter()
        r = await self.client.post("/api/v1/vms", json=self.body(image, template_id, f"ready-{self.seq}"))
        accepted = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        vm_id = r.json()["vmIds"][0]
        watch = asyncio.create_task(watch_console(self.vms_dir / vm_id / "serial.log", image.done_line, t0, 0.25))
        try:
            while True:
                left = self.args.timeout - (time.perf_counter() - t0)
                if left <= 0:
                    raise RuntimeError(f"{vm_id} not ready in {self.args.timeout:.0f} s")
                wait = min(300.0, max(1.0, left))
                vm = (await self.client.get(f"/api/v1/vms/{vm_id}", params={"waitReady": f"{wait:g}"}, timeout=wait + 30)).json()
                if vm["guestReady"]:
                    ready = time.perf_counter() - t0
                    break
                if vm["status"] not in ("provisioning", "starting", "running"):
                    raise RuntimeError(f"{vm_id} is {vm['status']}: {vm.get('error')}")
            qemu_cpu = cpu_seconds(json.loads((self.vms_dir / vm_id / "run.json").read_text())["pid"])
            other = busy_cpu() - host0 - (cpu_seconds(self.srv.pid) - srv0) - qemu_cpu
            done = await console_line(watch)
            times = await self.event_times(vm_id, t0_wall)
            phases = {"POST→202": accepted, **times, "server CPU": cpu_seconds(self.srv.pid) - srv0}
            return Run("vmplane", ready, done, qemu_cpu, max(0.0, other), load, phases)
        finally:
            watch.cancel()
            await self.delete_vm(vm_id)

    async def event_times(self, vm_id: str, t0_wall: float) -> dict[str, float]:
        """When the server stamped the VM's `vm.running` and `vm.guest_ready` (replayed from the log)."""
        found: dict[str, float] = {}
        params = {"resource": vm_id, "types": "vm.running,vm.guest_ready", "since": "0"}
        async with self.client.stream("GET", "/api/v1/events", params=params, timeout=30) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    ev = json.loads(line[5:])
                    stamp = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
                    found.setdefault("→" + ev["type"], stamp - t0_wall)
                    if ev["type"] == "vm.guest_ready":
                        break
        return found

    def bare_argv(self, cfg: dict[str, object], gdir: Path) -> list[str]:
        res = cfg["resources"]
        assert isinstance(res, dict)
        boot = cfg.get("boot")
        argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", self.args.accel, *(["-cpu", "host"] if self.args.accel == "kvm" else []),
                "-m", str(res["ramMb"]), "-smp", str(res["cpu"]), "-nodefaults", "-no-user-config", "-display", "none"]  # fmt: skip
        if isinstance(boot, dict):
            argv += ["-kernel", boot["kernel"], "-initrd", boot["initrd"], "-append", boot["cmdline"]]
        return argv + [
            "-drive", f"file={gdir / 'disk.qcow2'},if=none,id=disk0,format=qcow2,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk0" + ("" if boot else ",bootindex=1"),
            "-drive", "file=seed.iso,if=none,id=seed0,format=raw,readonly=on,media=cdrom",
            "-device", "ide-cd,drive=seed0,bus=ide.1,unit=0",
            "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={cfg['mac']},romfile=",
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=qga0,path=qga.sock,server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
            "-serial", "file:serial.log",
        ]  # fmt: skip

    async def bare_run(self, image: Image, cfg: dict[str, object], gdir: Path) -> Run:
        for name in ("disk.qcow2", "serial.log", "qemu.log"):
            (gdir / name).unlink(missing_ok=True)
        res = cfg["resources"]
        assert isinstance(res, dict)
        size = int(res["diskGb"]) << 30  # as the driver: the VM's size, at least the base's (below)
        base = Path(str(cfg["templateImage"]))
        info = await disk_info("qemu-img", base)  # the driver's own helpers: the same overlay as its VMs'
        await create_overlay("qemu-img", base, info.format, gdir / "disk.qcow2", max(size, info.virtual_size))
        load = os.getloadavg()[0]
        host0, srv0 = busy_cpu(), cpu_seconds(self.srv.pid)
        t0 = time.perf_counter()
        with open(gdir / "qemu.log", "wb") as log:
            proc = subprocess.Popen(
                self.bare_argv(cfg, gdir), cwd=gdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        watch = asyncio.create_task(watch_console(gdir / "serial.log", image.done_line, t0, 0.25))
        agent = GuestAgent("bare", gdir / "qga.sock")
        try:
            ping = asyncio.create_task(agent.execute("guest-ping", ready_timeout=self.args.timeout))
            while not ping.done():
                if proc.poll() is not None:
                    raise RuntimeError(f"bare QEMU exited {proc.returncode}: {(gdir / 'qemu.log').read_text()[-500:]}")
                await asyncio.wait([ping], timeout=0.5)
            await ping
            agent_at = time.perf_counter() - t0
            while True:
                try:
                    handle = await agent.execute("guest-file-open", {"path": CLOUD_INIT_RESULT, "mode": "r"})
                except AgentError:  # not there yet
                    if time.perf_counter() - t0 > self.args.timeout:
                        raise RuntimeError(f"bare {image.template}: cloud-init not done in {self.args.timeout:.0f} s") from None
                    await asyncio.sleep(self.args.bare_poll_ms / 1000)
                    continue
                ready = time.perf_counter() - t0
                await agent.execute("guest-file-close", {"handle": handle})
                break
            qemu_cpu = cpu_seconds(proc.pid)
            other = busy_cpu() - host0 - (cpu_seconds(self.srv.pid) - srv0) - qemu_cpu
            done = await console_line(watch)
            return Run("bare", ready, done, qemu_cpu, max(0.0, other), load, {"→agent answers": agent_at})
        finally:
            watch.cancel()
            await agent.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def wait_quiet(self) -> None:
        """Wait (up to --wait-idle s) until other processes use less than --idle-cores: on a
        small shared host another workload moves a TCG boot by more than vmplane costs."""
        deadline = time.monotonic() + self.args.wait_idle
        while time.monotonic() < deadline:
            h0, s0 = busy_cpu(), cpu_seconds(self.srv.pid)
            await asyncio.sleep(1.0)
            if busy_cpu() - h0 - (cpu_seconds(self.srv.pid) - s0) < self.args.idle_cores:
                return

    async def image(self, image: Image, runs: int) -> tuple[float, float] | None:
        template_id = await self.template(image)
        if template_id is None:
            return None
        gdir = self.scratch / image.template
        gdir.mkdir()
        cfg = await self.warm_up(image, template_id, gdir)
        res = image.resources
        print(f"{image.template}: {res['cpu']} vCPU, {res['ramMb']} MiB, {res['diskGb']} GiB overlay, {self.args.accel}; "
              f"{runs} run(s) per side, alternating; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
        sides: dict[str, list[Run]] = {"vmplane": [], "bare": []}
        for i in range(runs):
            for side in ("vmplane", "bare") if i % 2 == 0 else ("bare", "vmplane"):
                await self.wait_quiet()
                run = await (self.vmplane_run(image, template_id) if side == "vmplane" else self.bare_run(image, cfg, gdir))
                sides[side].append(run)
                print(f"  run {i + 1} {run.line()}", flush=True)
                await asyncio.sleep(self.args.settle)
        a, b = (statistics.median(r.ready for r in sides[s]) for s in ("vmplane", "bare"))
        ca, cb = (statistics.median(r.qemu_cpu for r in sides[s]) for s in ("vmplane", "bare"))
        print(f"RATIO {image.template}: create → guestReady {a:.2f} s / bare start → agent answers and cloud-init done "
              f"{b:.2f} s = {a / b:.3f} (medians of {runs}); the guest's QEMU had used {ca:.1f} / {cb:.1f} CPU s by then", flush=True)  # fmt: skip
        return a, b


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", action="append", choices=sorted(IMAGES), help="an image to measure (repeatable; default: all)")
    ap.add_argument("--runs", type=int, default=None, help="runs per side (default: 3 for tiny-linux, 1 for debian-12)")
    ap.add_argument("--accel", choices=("tcg", "kvm"), default="tcg", help="both sides' accelerator")
    ap.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one boot may take to be ready")
    ap.add_argument("--bare-poll-ms", type=int, default=250, help="how often the bare side looks for cloud-init's result file")
    ap.add_argument("--wait-idle", type=float, default=30.0, help="before each run, wait up to this long for the host to quiet down")
    ap.add_argument("--idle-cores", type=float, default=0.5, help="'quiet': other processes use less than this many cores")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of quiet between runs")
    ap.add_argument("--build", action="store_true", help="build debian-12 into the image cache when it is not there (minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the bare guests' directory and the server's data dir")
    args = ap.parse_args()

    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    # the server would build the tiny image before it is ready: build (or find) it first
    await asyncio.to_thread(build_tiny_image, tiny_dir(Settings(driver="qemu").resolved_image_cache()))
    scratch = Path(tempfile.mkdtemp(prefix="vmplane-readybench-"))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    data: Path | None = None
    results: dict[str, tuple[float, float]] = {}
    print(f"ready bench: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs", flush=True)
    try:
        async with server(["--driver", "qemu", "--accel", args.accel], env=env, prefix="vmplane-readybench-", port=args.port) as srv:
            data = srv.data
            bench = Bench(args, srv, scratch)
            for name in args.image or list(IMAGES):
                got = await bench.image(IMAGES[name], args.runs or IMAGES[name].runs)
                if got is not None:
                    results[name] = got
    finally:
        for root in (scratch, data):
            if root is not None:
                kill_qemus_under(root)
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
        if args.keep:
            print(f"kept: {scratch} (bare guests), {data} (server data dir)", file=sys.stderr)
    if results:
        print("summary (vmplane ÷ bare, create → guestReady): "
              + ", ".join(f"{k} {a / b:.3f} ({a:.1f} s / {b:.1f} s)" for k, (a, b) in results.items())
              + f"; load average now {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())
