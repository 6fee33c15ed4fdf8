"""Real guests (tiny-linux, TCG): a VM's counters and the seed of a VM made from a snapshot.

- Network counters follow the NIC by its MAC, not an interface name: renamed in the guest
  (`eth0` -> `ens3`, as Debian names it) they still move with traffic. Disk counters are
  QEMU's for the disk vmplane gave the VM, whatever the guest calls it.
- A bridge NIC is counted on its host tap, where the guest cannot fake it: what the tap
  sends is what the guest receives (checked on a real tap in a network namespace of its own).
- A VM from a snapshot of a VM made with an SSH key takes that key: the key logs in to the
  new VM, whose seed names the new VM (its own instance-id).

One `vmplane serve` process and two guests (the source and its clone) for the module; the
tests run in file order.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane import procfs

from ..support import admin_key, free_port, qemu_processes_of, require_qemu, serve, wait_ready
from .test_qemu_network import stop_server

pytestmark = pytest.mark.slow

BOOT_WAIT = 240.0
"""under TCG on a loaded machine a boot takes from seconds to minutes"""


class Lab:
    def __init__(self, c: httpx.Client, url: str, port: int, key: Path, data: Path) -> None:
        self.c, self.url, self.port, self.key, self.data = c, url, port, key, data
        self.vm = ""

    def wait_job(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.c.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "partial", "cancelled"):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)

    def exec(self, vm: str, argv: list[str], timeout: int = 30) -> dict[str, Any]:
        r = self.c.post(f"/api/v1/vms/{vm}/exec", json={"command": argv, "timeoutSec": timeout})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def booted(self, vm: str) -> None:
        """Wait until the guest finished its boot (its agent answers, its seed is applied)."""
        deadline = time.monotonic() + BOOT_WAIT
        while True:
            r = self.c.post(f"/api/v1/vms/{vm}/exec", json={"command": ["cat", "/run/vmplane/boot-complete"], "timeoutSec": 5})
            if r.status_code == 200 and r.json()["exitCode"] == 0:
                return
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)

    def stats(self, vm: str) -> dict[str, Any]:
        r = self.c.get(f"/api/v1/vms/{vm}/stats")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_qemu()
    if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
            pytest.fail("VMPLANE_REQUIRE_QEMU=1 but ssh/ssh-keygen (openssh-client) are not installed")
        pytest.skip("openssh-client is not installed")
    tmp = tmp_path_factory.mktemp("stats")
    data, port = tmp / "data", free_port()
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "carried", "-f", str(key)], check=True)
    url = f"http://127.0.0.1:{port}"
    proc = serve(data, port, tmp / "server.log", ["--driver", "qemu", "--accel", "tcg"], {"VMPLANE_CPU_OVERCOMMIT": "8", "VMPLANE_STATS_SAMPLE_SECONDS": "2"})
    try:
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": admin_key(data)}) as c:
            lab = Lab(c, url, port, key, data)
            tpl = next(t["id"] for t in c.get("/api/v1/templates").json()["items"] if t["name"] == "tiny-linux")
            r = c.post("/api/v1/vms", json={
                "name": "counted", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2},
                "sshKeys": [key.with_suffix(".pub").read_text().strip()],
            })  # fmt: skip
            assert r.status_code == 202, r.text
            assert lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
            lab.vm = r.json()["vmIds"][0]
            lab.booted(lab.vm)
            yield lab
    finally:
        stop_server(proc, data)  # and every guest or dnsmasq naming its data dir


def test_network_counters_follow_the_nic_by_mac_when_the_guest_renames_it(lab: Lab) -> None:
    vm = lab.vm
    nic_mac = lab.c.get(f"/api/v1/vms/{vm}").json()["nics"][0]["mac"]
    renamed = lab.exec(vm, ["sh", "-c",
        "gw=$(ip route | awk '/^default/ {print $3; exit}'); "
        "ip link set eth0 down && ip link set eth0 name ens3 && ip link set ens3 up && "
        "ip route replace default via $gw dev ens3 && cat /sys/class/net/ens3/address && echo $gw",
    ])  # fmt: skip
    assert renamed["exitCode"] == 0, renamed
    mac, gateway = renamed["stdout"].split()
    assert mac.lower() == nic_mac.lower()
    assert lab.exec(vm, ["ls", "/sys/class/net"])["stdout"].split() == ["ens3", "lo"]

    before = lab.stats(vm)
    # traffic through the renamed interface: the control plane's API document, fetched from the
    # guest through the user-mode network's gateway (the host's loopback)
    size = len(lab.c.get("/openapi.json").content)
    fetch = lab.exec(vm, ["sh", "-c", f"wget -q -O - http://{gateway}:{lab.port}/openapi.json | wc -c"], timeout=60)
    assert fetch["exitCode"] == 0 and int(fetch["stdout"]) == size, fetch
    after = lab.stats(vm)
    print(f"[stats] {size} bytes fetched: rx {before['netRxBytes']} -> {after['netRxBytes']}, tx {before['netTxBytes']} -> {after['netTxBytes']}")
    assert after["netRxBytes"] - before["netRxBytes"] >= size, (before, after)
    assert after["netTxBytes"] > before["netTxBytes"], (before, after)  # the request and the ACKs

    # disk counters: QEMU's, for the disk it was given (the guest's ext4 data disk)
    wrote = lab.exec(vm, ["sh", "-c", "dd if=/dev/urandom of=/mnt/disk/blob bs=64k count=32 2>/dev/null && sync && echo ok"], timeout=60)
    assert wrote["stdout"].strip() == "ok", wrote
    disk = lab.stats(vm)
    assert disk["diskReadBytes"] > 0 and disk["diskWriteBytes"] - after["diskWriteBytes"] >= 32 * 65536, (after, disk)


def test_memory_is_the_guests_own_figure_and_uptime_ticks(lab: Lab) -> None:
    """memoryMb is what the guest uses (its balloon statistics: total - available), labelled
    `guest`, not QEMU's host RSS (which counts QEMU and exceeded the guest's 256 MiB); the
    uptime of the stats and of the VM counts on between two looks."""
    vm = lab.vm
    deadline = time.monotonic() + 30  # the balloon polls every 2 s once asked (at the first stats call)
    while (s := lab.stats(vm))["memorySource"] != "guest":
        assert s["memorySource"] == "host-rss", s
        assert time.monotonic() < deadline, s
        time.sleep(1)
    meminfo = dict(line.split(":", 1) for line in lab.exec(vm, ["cat", "/proc/meminfo"])["stdout"].splitlines())
    kib = {k: int(v.split()[0]) for k, v in meminfo.items() if k in ("MemTotal", "MemAvailable")}
    in_guest = (kib["MemTotal"] - kib["MemAvailable"]) // 1024
    (pid,) = [pid for pid, argv in procfs.processes_mentioning(vm) if "qemu-system" in argv[0]]
    rss = procfs.rss_bytes(pid) // (1 << 20)
    s = lab.stats(vm)
    print(f"[stats] memory: {s['memoryMb']} MiB ({s['memorySource']}) of {s['memoryTotalMb']}; guest /proc/meminfo {in_guest} MiB; QEMU RSS {rss} MiB")
    assert s["memorySource"] == "guest" and 0 < s["memoryMb"] < s["memoryTotalMb"] == 256, s
    assert abs(s["memoryMb"] - in_guest) <= 16, (s, in_guest)  # the balloon's report is at most 2 s old
    assert s["memoryMb"] < rss, (s, rss)  # not the host RSS

    first, vm_first = lab.stats(vm)["uptimeSeconds"], lab.c.get(f"/api/v1/vms/{vm}").json()
    time.sleep(2.2)
    later, vm_later = lab.stats(vm)["uptimeSeconds"], lab.c.get(f"/api/v1/vms/{vm}").json()
    assert 2.0 <= later - first < 30, (first, later)
    assert vm_first["startedAt"] == vm_later["startedAt"] and vm_first["startedAt"].endswith("Z")
    assert vm_first["uptime"] != vm_later["uptime"], (vm_first["uptime"], vm_later["uptime"])


def test_the_stored_history_shows_a_busy_loop(lab: Lab) -> None:
    """The sampler (every 2 s here) stores what the stats path measures: the samples taken
    while a busy loop runs (through `exec`) show CPU, the VM list carries the latest sample, the
    node's carry the host's figures. (Not "more than idle": under TCG an idle guest's QEMU is
    busy too, and on a loaded host a busy one gets little more of a core.)"""
    vm = lab.vm
    history = lambda: lab.c.get(f"/api/v1/vms/{vm}/stats/history").json()["items"]  # noqa: E731
    while len(idle := history()) < 2:
        time.sleep(1)
    began = idle[-1]["at"]
    busy = lab.exec(vm, ["sh", "-c", "(while :; do :; done) & sleep 6; kill $!; echo done"], timeout=60)
    assert busy["stdout"].strip() == "done", busy
    deadline = time.monotonic() + 30
    while True:  # the samples taken while it ran (6 s: about three) and the one after its end
        during = [i for i in history() if i["at"] > began]
        if len(during) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"[history] idle CPU % {[i['cpuPercent'] for i in idle]}, busy {[i['cpuPercent'] for i in during]}")
    assert len(during) >= 3 and min(i["cpuPercent"] for i in during) > 0, (idle, during)
    last = during[-1]
    assert last["memoryMb"] > 0 and last["memoryTotalMb"] >= 256 and last["diskReadBps"] is not None, last
    listed = next(v for v in lab.c.get("/api/v1/vms").json()["items"] if v["id"] == vm)
    assert listed["stats"] is not None and listed["stats"]["memoryMb"] > 0, listed
    # its node is this host: the node's samples carry the host's measured CPU and memory use
    node = lab.c.get(f"/api/v1/nodes/{listed['node']}/stats/history").json()["items"][-1]
    assert node["ramMbUsed"] >= 256 and node["hostCpuPercent"] is not None and 0 < node["hostMemoryPercent"] <= 100, node


def test_a_vm_from_a_snapshot_takes_the_sources_ssh_key(lab: Lab) -> None:
    c = lab.c
    r = c.post(f"/api/v1/vms/{lab.vm}/snapshots", json={"name": "with-key"})
    assert r.status_code == 202, r.text
    assert lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
    r = c.post("/api/v1/vms", json={"name": "from-snapshot", "snapshotId": r.json()["snapshotId"]})  # no key given
    assert r.status_code == 202, r.text
    assert lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
    clone = r.json()["vmIds"][0]
    lab.booted(clone)
    ssh = c.get(f"/api/v1/vms/{clone}").json()["ssh"]
    argv = ["ssh", "-i", str(lab.key), "-p", str(ssh["port"]), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            f"{ssh['user']}@{ssh['host']}", "cat /run/vmplane/instance-id /etc/hostname"]  # fmt: skip
    deadline = time.monotonic() + 120
    while True:  # dropbear may still be starting (slirp then resets the connection): retry that, not a refused key
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        if done.returncode == 0 or "Permission denied" in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [clone, "from-snapshot"]  # its own identity: cloud-init runs again for it

    for vm in (clone, lab.vm):
        r = c.delete(f"/api/v1/vms/{vm}")
        assert lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
        assert qemu_processes_of(vm) == []


TAP_CHECK = textwrap.dedent("""
    import fcntl, json, os, select, socket, struct, subprocess
    from vmplane.drivers.qemu.guest import tap_bytes

    TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"vmtstats0", IFF_TAP | IFF_NO_PI))  # QEMU's side of the tap
    for cmd in ("ip link set lo up", "ip link set vmtstats0 up", "ip addr add 10.99.0.1/24 dev vmtstats0",
                "ip neigh replace 10.99.0.2 lladdr 52:54:00:12:34:56 dev vmtstats0"):
        subprocess.run(cmd.split(), check=True)
    start = tap_bytes("vmtstats0")
    # the guest sends: frames QEMU writes into the tap
    frame = bytes.fromhex("ffffffffffff525400123456" "88b5") + bytes(986)  # 1000 bytes, local experimental ethertype
    for _ in range(7):
        os.write(fd, frame)
    # the guest receives: the host sends through the tap
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(bytes(1200), ("10.99.0.2", 9))
    delivered = 0  # the kernel counts what the tap sends once QEMU reads it
    while select.select([fd], [], [], 5)[0]:
        got = len(os.read(fd, 65536))
        delivered += got
        if got >= 1242:  # our datagram: 1200 + UDP 8 + IPv4 20 + Ethernet 14
            break
    end = tap_bytes("vmtstats0")
    print(json.dumps([start, end, tap_bytes("no-such-tap"), delivered]))
""")


def test_a_bridge_nic_is_counted_on_its_host_tap_the_guest_side_up(tmp_path: Path) -> None:
    """Counts of a real tap (in a network namespace of its own) as the guest sees them:
    received = what the host sent into the tap, sent = what came out of it."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root, unshare and /dev/net/tun")
    # a network namespace, and a mount namespace with its own /sys (sysfs shows the netns it is mounted in)
    inner = f"mount -t sysfs sysfs /sys && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", inner, TAP_CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (start_rx, start_tx), (end_rx, end_tx), missing, delivered = json.loads(done.stdout)
    assert missing is None  # no tap: the VM is not running here
    assert end_tx - start_tx == 7 * 1000, done.stdout  # the guest sent exactly the frames written
    assert end_rx - start_rx == delivered >= 1242, done.stdout  # the guest received the datagram (and what else the host sent it)
