"""The NFC export-lease path of vSphere disk export, against a scripted lease (vcsim 0.24 has
no ExportVm): it waits for the lease, fetches each disk URL with `*` replaced by the vCenter's
host and the session cookie, reports progress to the lease, completes it, and aborts it when a
download fails. A real vCenter's lease is not exercised here (see docs/imports.md)."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vmodl

from vmplane.domain.vsphere import Connection, VsphereDisk, VsphereVm, VsphereVmInfo
from vmplane.errors import VmplaneError
from vmplane.outbound import Policy, parse_allow
from vmplane.services import vsphere as vs

DISK = b"KDMV" + b"\x01" * 300_000
NET = vs._Net(Policy(parse_allow(["127.0.0.1/32"])), 1 << 30)  # the test's NFC server is on loopback


@pytest.fixture
def nfc() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append((self.path, self.headers.get("Cookie", "")))
            if self.path != "/nfc/52a1/disk-0.vmdk":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(DISK)))
            self.end_headers()
            self.wfile.write(DISK)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], seen
    httpd.shutdown()


class Lease:
    def __init__(self, urls: list[Any]) -> None:
        self.polls = 0
        self.info = SimpleNamespace(deviceUrl=urls)
        self.progress: list[int] = []
        self.completed = False
        self.aborted: Any = None
        self.error = None

    @property
    def state(self) -> str:
        self.polls += 1
        return "initializing" if self.polls < 3 else "ready"

    def HttpNfcLeaseProgress(self, pct: int) -> None:  # noqa: N802
        self.progress.append(pct)

    def HttpNfcLeaseComplete(self) -> None:  # noqa: N802
        self.completed = True

    def HttpNfcLeaseAbort(self, fault: Any) -> None:  # noqa: N802
        self.aborted = fault


def _setup(port: int, path: str) -> tuple[Any, Any, Connection, VsphereVmInfo, Lease]:
    url = SimpleNamespace(url=f"http://*:{port}{path}", key="/vm-42/VirtualLsiLogicController0:0", disk=True, fileSize=len(DISK), targetId="disk-0.vmdk")
    cd = SimpleNamespace(url=f"http://*:{port}/nfc/52a1/cd.iso", key="/vm-42/cdrom", disk=False, fileSize=1)
    lease = Lease([url, cd])
    vm = SimpleNamespace(ExportVm=lambda: lease)
    si = SimpleNamespace(_stub=SimpleNamespace(cookie='vmware_soap_session="abc123"; Path=/; HttpOnly'))
    conn = Connection(f"http://127.0.0.1:{port}/sdk", "u", "p", True)
    summary = VsphereVm("vm", "DC/vm/vm", "poweredOn", 1, 512, 0, "", None)
    info = VsphereVmInfo(summary, "DC", "bios", "otherGuest", (VsphereDisk(2000, "Hard disk 1", 1 << 30, "[ds] vm/vm.vmdk"),), (), ())
    return si, vm, conn, info, lease


def test_disks_come_through_the_lease_which_is_kept_alive_and_completed(nfc: Any, tmp_path: Path) -> None:
    port, seen = nfc
    si, vm, conn, info, lease = _setup(port, "/nfc/52a1/disk-0.vmdk")
    reports: list[tuple[int, int | None]] = []
    files = vs._export_by_lease(si, conn, vm, info, tmp_path, lambda d, t: reports.append((d, t)), NET)
    assert [(f.label, f.path.read_bytes() == DISK, f.via) for f in files] == [("Hard disk 1", True, "lease")]
    assert seen == [("/nfc/52a1/disk-0.vmdk", 'vmware_soap_session="abc123"')]  # the CD image is not fetched
    assert lease.completed and lease.aborted is None and lease.polls >= 3
    assert lease.progress and lease.progress[-1] == 99 and reports[-1] == (len(DISK), len(DISK))


def test_a_failed_download_aborts_the_lease(nfc: Any, tmp_path: Path) -> None:
    port, _seen = nfc
    si, vm, conn, info, lease = _setup(port, "/nfc/52a1/gone.vmdk")
    with pytest.raises(VmplaneError, match="HTTP 404"):
        vs._export_by_lease(si, conn, vm, info, tmp_path, lambda d, t: None, NET)
    assert not lease.completed and isinstance(lease.aborted, vmodl.MethodFault)


def test_a_server_without_export_vm_falls_back(tmp_path: Path) -> None:
    def missing() -> None:
        raise vmodl.fault.MethodNotFound(msg="ExportVm")

    with pytest.raises(vs._NoLease):
        vs._export_by_lease(None, Connection("https://vc/sdk", "u", "p"), SimpleNamespace(ExportVm=missing), None, tmp_path, lambda d, t: None, NET)  # type: ignore[arg-type]


def test_a_disk_larger_than_the_cap_is_cut_off_and_the_lease_aborted(nfc: Any, tmp_path: Path) -> None:
    port, _seen = nfc
    si, vm, conn, info, lease = _setup(port, "/nfc/52a1/disk-0.vmdk")
    with pytest.raises(VmplaneError, match="more than the 1000 vmplane accepts"):
        vs._export_by_lease(si, conn, vm, info, tmp_path, lambda d, t: None, vs._Net(NET.policy, 1000))
    assert not lease.completed and isinstance(lease.aborted, vmodl.MethodFault)
