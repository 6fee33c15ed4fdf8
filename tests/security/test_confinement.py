"""Confinement of QEMU and qemu-img (issue 18, item 4), against a real server with a real QEMU
node: a VM's QEMU runs as the unprivileged `vmplane-qemu` under seccomp and, as that user,
can read none of vmplane's files; qemu-img run by `images.run_tool` runs as that user too, so
an image naming a host file as its backing reads nothing of it. One guest for the module."""

import asyncio
import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from vmplane import procfs
from vmplane.drivers.qemu import confine, images
from vmplane.errors import DriverError

from ..support import Server, make_settings, require_qemu, tiny_template

pytestmark = pytest.mark.slow
shared = pytest.mark.asyncio(loop_scope="module")
QEMU_USER = confine.DEFAULT_USER


def _require_confinement() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("confinement needs vmplane to run as root")
    try:
        return pwd.getpwnam(QEMU_USER)
    except KeyError:
        pytest.skip(f"user {QEMU_USER} does not exist (scripts/install-qemu.sh makes it)")


class Node:
    def __init__(self, server: Server, running: str, stopped: str) -> None:
        self.server, self.running, self.stopped = server, running, stopped

    @property
    def data_dir(self) -> Path:
        return Path(self.server.rt.data_dir)

    def vm_dir(self, vm_id: str) -> Path:
        return self.data_dir / "qemu" / "vms" / vm_id

    def pid(self) -> int:
        return int((self.vm_dir(self.running) / "qemu.pid").read_text())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    require_qemu()
    _require_confinement()
    base = tmp_path_factory.mktemp("confine")
    s = await Server(make_settings(base, driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=5)).start()
    try:
        tpl = await tiny_template(s)
        res = {"cpu": 1, "ramMb": 256, "diskGb": 1}
        job = await s.create({"name": "confined", "templateId": tpl, "resources": res})
        assert job["state"] == "succeeded", job
        other = await s.create({"name": "other", "templateId": tpl, "resources": res, "start": False})
        assert other["state"] == "succeeded", other
        r = await s.client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["vm.*"]})
        assert r.status_code == 201  # (the first sealed secret makes secrets.key)
        yield Node(s, job["tasks"][0]["resourceId"], other["tasks"][0]["resourceId"])
    finally:
        await s.stop()
        for pid, _argv in procfs.processes_mentioning(str(base) + os.sep):  # the guest outlives its server
            procfs.kill(pid)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@shared
async def test_the_qemu_of_a_vm_runs_as_the_qemu_user_under_seccomp(node: Node) -> None:
    user = _require_confinement()
    status = _status(node.pid())
    assert status["Uid"].split() == [str(user.pw_uid)] * 4  # real, effective, saved, file system
    assert status["Gid"].split() == [str(user.pw_gid)] * 4
    assert status["Groups"].split() in ([], [str(user.pw_gid)])
    assert status["CapEff"] == "0000000000000000"
    assert status["Seccomp"] == "2"  # a filter
    argv = Path(f"/proc/{node.pid()}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-runas") + 1] == QEMU_USER.encode()
    assert b"spawn=deny" in argv[argv.index(b"-sandbox") + 1]


def _as_qemu_user(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", QEMU_USER, "--", *argv], capture_output=True, text=True, timeout=30)


@shared
async def test_the_qemu_user_can_read_none_of_vmplanes_files(node: Node) -> None:
    secrets_ = [
        node.data_dir / "vmplane.db",
        node.data_dir / "admin-api-key",
        node.data_dir / "secrets.key",
        node.vm_dir(node.stopped) / "disk.qcow2",  # another VM's disk
        node.vm_dir(node.running) / "disk.qcow2",  # and its own, by path
    ]
    for path in secrets_:
        assert path.is_file() and path.read_bytes()  # there, and readable to vmplane (root)
        r = _as_qemu_user("cat", str(path))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r)
        assert r.stdout == ""
    for d in (node.data_dir, node.vm_dir(node.running)):
        r = _as_qemu_user("ls", str(d))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (d, r)
    # nor the descriptors of a QEMU (another VM's, run by the same user): it is not dumpable
    r = _as_qemu_user("ls", f"/proc/{node.pid()}/fd")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = _as_qemu_user("cat", f"/proc/{node.pid()}/fd/0")
    assert r.returncode != 0 and r.stdout == "", r
    # nothing in the data dir belongs to the QEMU user between runs of its tools
    user = _require_confinement()
    owned = [p for p in node.data_dir.rglob("*") if p.lstat().st_uid == user.pw_uid]
    assert owned == []


@shared
async def test_a_snapshot_of_the_running_confined_guest_works(node: Node) -> None:
    """A confined QEMU opens nothing by path after its start: the copy reaches it as a descriptor."""
    s = node.server
    r = await s.client.post(f"/api/v1/vms/{node.running}/snapshots", json={"name": "live"})
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", job
    snaps = list((node.data_dir / "qemu" / "snapshots").glob("*.qcow2"))
    assert len(snaps) == 1 and stat.S_IMODE(snaps[0].stat().st_mode) == 0o600 and snaps[0].stat().st_uid == 0
    assert _status(node.pid())["Uid"].split()[0] == str(_require_confinement().pw_uid)  # the same QEMU, still confined


@shared
async def test_qemu_img_run_by_run_tool_runs_as_the_qemu_user(node: Node) -> None:
    """qemu-img blocks opening a FIFO (by path, in a directory open to all): its process is
    seen in /proc while it waits."""
    user = _require_confinement()
    d = Path(tempfile.mkdtemp(prefix="vmplane-fifo-"))
    try:
        os.chmod(d, 0o755)
        fifo = d / "wait"
        os.mkfifo(fifo, 0o666)
        os.chmod(fifo, 0o666)
        run = asyncio.create_task(images.run_tool(["qemu-img", "info", "-f", "raw", str(fifo)], "qemu-img info", timeout=30))
        pid = None
        for _ in range(200):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        cmd = (entry / "cmdline").read_bytes()
                    except OSError:
                        continue
                    if cmd.startswith(b"qemu-img\0info") and str(fifo).encode() in cmd:
                        pid = int(entry.name)
            if pid is not None:
                break
            await asyncio.sleep(0.05)
        assert pid is not None, "qemu-img did not start"
        status = _status(pid)
        fd = os.open(fifo, os.O_WRONLY)  # let it go on (and end)
        os.close(fd)
        await run
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        assert status["Gid"].split() == [str(user.pw_gid)] * 4
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


@shared
async def test_qemu_img_reaches_only_the_files_it_is_handed(node: Node, tmp_path: Path) -> None:
    key = node.data_dir / "admin-api-key"
    before = key.stat()
    # a path it is not handed: refused by the kernel (the data dir is 0700 root)
    status, out, err = await images.run_tool(["qemu-img", "info", "--output=json", "-f", "raw", str(key)], "qemu-img info")
    assert status != 0 and "Permission denied" in err and out == ""
    # handed, it reads that file; afterwards the file's owner and mode are as they were
    status, out, err = await images.run_tool(["qemu-img", "info", "--output=json", "-f", "raw", str(key)], "qemu-img info", reads=[key])
    assert status == 0, err
    after = key.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_uid, before.st_gid, 0o600)


@shared
async def test_an_image_whose_backing_file_is_a_host_file_reads_nothing_of_it(node: Node, tmp_path: Path) -> None:
    """The attack of issue 18 with one check missing: a qcow2 naming vmplane's owner key as its
    backing file (raw). Converted by a qemu-img handed only the image, the backing file cannot
    be opened; the export path refuses the name before any run."""
    key = node.data_dir / "admin-api-key"
    secret = key.read_bytes().strip()
    work = node.data_dir / "imports"
    work.mkdir(exist_ok=True)
    evil = work / "evil.qcow2"
    size = str(max(65536, key.stat().st_size))
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", str(key), str(evil), size], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out = work / "out.raw"
    try:
        status, _o, err = await images.run_tool(["qemu-img", "convert", "-O", "raw", str(evil), str(out)], "qemu-img convert", reads=[evil], writes=[out])
        assert status != 0 and "Permission denied" in err
        assert secret not in out.read_bytes()
        with pytest.raises(DriverError, match="backing file vmplane does not follow"):
            await images.to_raw("qemu-img", evil, out, allowed=[])
        assert secret not in out.read_bytes()
    finally:
        evil.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == 0


@shared
async def test_a_disk_whose_header_was_rewritten_to_name_a_host_file_does_not_start(node: Node) -> None:
    """What a compromised QEMU could do to its own disk (it holds it open read-write): name
    vmplane's owner key as the backing file. QEMU opens a disk's backing file as root at
    start; vmplane refuses to start a disk that names another file than the one it gave it."""
    s = node.server
    disk = node.vm_dir(node.stopped) / "disk.qcow2"
    key = node.data_dir / "admin-api-key"
    rebased = subprocess.run(["qemu-img", "rebase", "-u", "-F", "raw", "-b", str(key), str(disk)], capture_output=True, text=True)
    assert rebased.returncode == 0, rebased.stderr
    r = await s.client.post(f"/api/v1/vms/{node.stopped}/start")
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=60)
    assert job["state"] == "failed" and "names a backing file vmplane did not give it" in job["tasks"][0]["error"], job
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, str(node.vm_dir(node.stopped)))]
    r = await s.client.post(f"/api/v1/vms/{node.stopped}/snapshots", json={"name": "of-a-tampered-disk"})
    job = await s.wait_job(r.json()["jobId"], timeout=60)
    assert job["state"] == "failed" and "names a backing file vmplane did not give it" in job["tasks"][0]["error"], job


def _mentions(proc: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@shared
async def test_a_vmdk_in_a_folder_reaches_its_own_extents_and_no_other_file(node: Node) -> None:
    """run_tool's `cwd`: a descriptor named relative to its folder reaches the extents handed
    with it there; one naming vmplane's owner key (by absolute path, or climbing out of the
    folder) reaches nothing, though qemu-img runs in that folder."""
    key = node.data_dir / "admin-api-key"
    folder = node.data_dir / "imports" / "vmdk"
    folder.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "good.vmdk", "1M"], cwd=folder, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    files = [folder / "good.vmdk", folder / "good-flat.vmdk"]
    status, out, err = await images.run_tool(["qemu-img", "info", "--output=json", "good.vmdk"], "qemu-img info", cwd=folder, reads=files)
    assert status == 0 and '"format": "vmdk"' in out, err
    for name in (str(key), f"../../{key.name}"):
        (folder / "evil.vmdk").write_text(
            f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 1 FLAT "{name}" 0\n'
        )
        out_file = folder / "out.raw"
        status, _o, err = await images.run_tool(
            ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", "evil.vmdk", str(out_file)], "qemu-img convert", cwd=folder,
            reads=[folder / "evil.vmdk"], writes=[out_file],
        )  # fmt: skip
        assert status != 0 and "Permission denied" in err, (name, err)
        assert key.read_bytes().strip() not in out_file.read_bytes()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_gid == 0  # its search grant ended with the run
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
