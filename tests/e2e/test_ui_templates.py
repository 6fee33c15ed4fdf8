"""The web console's Templates page and the VM page's Edit panel, in a real browser (Debian's
chromium driven by Playwright, as test_ui_browser.py) against real `vmplane serve` processes:

- on the qemu driver (the real image intake; no guest boots): upload a small qcow2 made with
  qemu-img here and see the browser's upload progress reach 100 %, then the import job's, and
  the template appear `ready` with its size; cancel an upload half way (throttled) and see the
  server keep nothing of it; upload a qcow2 whose backing file is /etc/shadow
  and see the import refused with the server's reason; import from a URL served by a local
  HTTP server (loopback, allowed by the operator's VMPLANE_OUTBOUND_ALLOW as every test
  server); delete a template a VM uses (refused: the server's reason shown), then one no VM
  uses (gone from the list).
- on the sim driver: edit CPU and RAM of a stopped VM (applied at once, nothing pending), see a
  refused value's error next to its field, edit a running VM (marked pending restart) and
  apply it with "Restart to apply" (the mark goes). A refused name shows next to its field; a
  resize no node has room for shows the job's reason.

No request may leave vmplane's origin, no script error on any page. Screenshots under
artifacts/screenshots/templates/."""

import functools
import http.server
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane import procfs

from ..support import admin_key, free_port, require_qemu, serve, wait_ready
from ..ui_support import UNNAMED, require_browser

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots" / "templates"


@dataclass
class Plane:
    origin: str
    key: str
    api: httpx.Client
    root: Path


@pytest.fixture(scope="module")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


def _plane(root: Path, args: list[str]) -> Iterator[Plane]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    proc = serve(root / "data", port, root / "server.log", args)
    try:
        wait_ready(origin, proc, timeout=120)
        key = admin_key(root / "data")
        with httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": key}, timeout=30) as api:
            yield Plane(origin, key, api, root)
    finally:
        proc.kill()
        proc.wait()
        for pid, _argv in procfs.processes_mentioning(str(root) + "/"):
            procfs.kill(pid)


@pytest.fixture(scope="module")
def qemu_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    require_browser()
    require_qemu()
    yield from _plane(tmp_path_factory.mktemp("tplqemu"), ["--driver", "qemu", "--accel", "tcg"])


@pytest.fixture(scope="module")
def sim_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    require_browser()
    yield from _plane(tmp_path_factory.mktemp("tplsim"), ["--driver", "sim"])


class Page:
    """A signed-in page; at the end, no script error and no request outside the origin."""

    def __init__(self, browser: Any, plane: Plane, shots: Path) -> None:
        self.plane = plane
        self.shots = shots
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.add_init_script(f"sessionStorage.setItem('vmplane.apiKey', {plane.key!r})")
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        assert self.page.evaluate(UNNAMED) == [], name
        assert self.page.evaluate("document.documentElement.scrollWidth") <= 1280, f"{name} scrolls sideways"

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors
        assert [u for u in self.requests if not u.startswith(self.plane.origin + "/")] == []


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def written_qcow2(path: Path, mib: int) -> Path:
    """A real qcow2 of 64 MiB (virtual) with `mib` MiB written, so the file has that size."""
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def image_host(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on loopback: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def row(page: Any, name: str) -> Any:
    return page.locator("#templates tbody tr", has=page.get_by_text(name, exact=True))


def test_templates_upload_import_and_delete(
    ui_browser: Any, qemu_plane: Plane, screenshots: Path, tmp_path: Path, image_host: tuple[Path, str], record_property: Any
) -> None:
    from playwright.sync_api import expect

    record_property("artifacts", str(screenshots))
    p = Page(ui_browser, qemu_plane, screenshots)
    page = p.page
    try:
        page.goto(f"{qemu_plane.origin}/ui/#/templates")
        expect(page.get_by_role("heading", name="Templates", exact=True)).to_be_visible()
        expect(row(page, "tiny-linux")).to_contain_text("ready")
        expect(page.get_by_role("button", name="Cancel upload")).to_be_hidden()  # only while one runs
        p.shot("templates")

        # upload: the browser's progress to 100 %, then the import job's, then the row, ready
        image = written_qcow2(tmp_path / "up-e2e.qcow2", 8)
        page.evaluate("""() => { window.seen = [];
          new MutationObserver(() => window.seen.push(document.getElementById('tpl-up-progress').textContent))
            .observe(document.getElementById('tpl-up-progress'), { childList: true, characterData: true, subtree: true }); }""")
        page.set_input_files("#tpl-up-file", str(image))
        expect(page.locator("#tpl-up-name")).to_have_value("up-e2e")  # from the file's name
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.locator("#tpl-up-progress")).to_contain_text("(100%)", timeout=30_000)
        expect(page.locator("#tpl-up-job")).to_have_attribute("data-job-state", "succeeded", timeout=120_000)
        seen = page.evaluate("window.seen")
        assert seen and seen[-1].endswith("(100%)"), seen
        expect(row(page, "up-e2e")).to_contain_text("ready")
        expect(row(page, "up-e2e")).to_contain_text("uploaded")
        tpl = next(t for t in qemu_plane.api.get("/templates").json()["items"] if t["name"] == "up-e2e")
        assert tpl["status"] == "ready" and tpl["sizeMb"] > 0, tpl
        p.shot("templates-uploaded")

        # cancelled half way (the upload throttled to 1 MB/s): progress short of 100 %, the
        # server removes what arrived and makes no template
        cdp = p.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1_000_000})
        page.set_input_files("#tpl-up-file", str(image))
        page.locator("#tpl-up-name").fill("cancel-e2e")
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.locator("#tpl-up-progress")).to_contain_text(re.compile(r"\((?:[1-9]|[1-9][0-9])%\)"), timeout=15_000)
        page.get_by_role("button", name="Cancel upload").click()
        expect(page.get_by_role("alert").filter(has_text="the upload was cancelled")).to_be_visible()
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        images = qemu_plane.root / "data" / "images"
        deadline = time.monotonic() + 15
        while list(images.glob("*.upload")):
            assert time.monotonic() < deadline, list(images.glob("*"))
            time.sleep(0.1)
        assert "cancel-e2e" not in {t["name"] for t in qemu_plane.api.get("/templates").json()["items"]}

        # a qcow2 backed by a host file: the upload arrives, its import is refused, with the reason
        evil = tmp_path / "evil.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", str(evil), "1M")
        page.set_input_files("#tpl-up-file", str(evil))
        page.locator("#tpl-up-name").fill("evil-e2e")
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.locator("#tpl-up-job")).to_have_attribute("data-job-state", "failed", timeout=120_000)
        expect(page.get_by_role("alert").filter(has_text="Import of evil-e2e failed")).to_contain_text("backing")
        p.shot("templates-refused")

        # import from a URL (loopback: VMPLANE_OUTBOUND_ALLOW as set for every test server)
        www, base = image_host
        shutil.copy(image, www / "from-url.qcow2")
        page.locator("#tpl-url-sourceUrl").fill(f"{base}/from-url.qcow2")
        page.locator("#tpl-url-name").fill("url-e2e")
        page.get_by_role("button", name="Import", exact=True).click()
        expect(page.locator("#tpl-url-job")).to_have_attribute("data-job-state", "succeeded", timeout=120_000)
        expect(row(page, "url-e2e")).to_contain_text("ready")
        expect(row(page, "url-e2e")).to_contain_text("127.0.0.1")

        # a bad name: the server's error next to the field (the browser's own check let it pass)
        page.locator("#tpl-url-name").fill("url-e2e")
        page.get_by_role("button", name="Import", exact=True).click()
        expect(page.locator("#tpl-url-name-error")).to_contain_text("already exists")
        expect(page.locator("#tpl-url-name")).to_have_attribute("aria-invalid", "true")

        # delete one a VM uses: refused, the server's reason shown; then one no VM uses: gone
        r = qemu_plane.api.post("/vms", json={"name": "uses-up", "templateId": tpl["id"], "start": False})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while qemu_plane.api.get(f"/jobs/{r.json()['jobId']}").json()["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        row(page, "up-e2e").get_by_role("button", name="Delete template up-e2e").click()
        page.locator("#confirm-ok").click()
        expect(page.get_by_text("up-e2e was not deleted")).to_contain_text("used by 1 VM", timeout=60_000)
        expect(row(page, "up-e2e")).to_be_visible()
        row(page, "url-e2e").get_by_role("button", name="Delete template url-e2e").click()
        page.locator("#confirm-ok").click()
        expect(row(page, "url-e2e")).to_have_count(0, timeout=60_000)
        p.shot("templates-after-delete")
    finally:
        p.close()


def test_edit_panel_resizes_stopped_and_running_vms(ui_browser: Any, sim_plane: Plane, screenshots: Path) -> None:
    from playwright.sync_api import expect

    api = sim_plane.api

    def created(name: str, start: bool) -> str:
        r = api.post("/vms", json={"name": name, "start": start, "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
        assert r.status_code == 202, r.text
        vm_id = r.json()["vmIds"][0]
        deadline = time.monotonic() + 60
        want = "running" if start else "stopped"
        while api.get(f"/vms/{vm_id}").json()["status"] != want:
            assert time.monotonic() < deadline, api.get(f"/vms/{vm_id}").json()
            time.sleep(0.2)
        return str(vm_id)

    stopped, running = created("edit-stopped", False), created("edit-running", True)
    p = Page(ui_browser, sim_plane, screenshots)
    page = p.page
    try:
        # a stopped VM: applied at once, nothing pending
        page.goto(f"{sim_plane.origin}/ui/#/vms/{stopped}")
        expect(page.locator("#vm-edit-cpu")).to_have_value("1")
        page.locator("#vm-edit-cpu").fill("2")
        page.locator("#vm-edit-ramMb").fill("1024")
        page.locator("#vm-edit-diskGb").fill("12")
        page.locator("#vm-edit-displayName").fill("Edited in the browser")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#vm-edit-job")).to_have_attribute("data-job-state", "succeeded", timeout=30_000)
        got = api.get(f"/vms/{stopped}").json()
        assert got["resources"] == {**got["resources"], "cpu": 2, "ramMb": 1024, "diskGb": 12}, got
        assert got["displayName"] == "Edited in the browser" and not got["pendingRestart"], got
        expect(page.locator("#vm-edit-pending")).to_be_empty()
        expect(page.locator("#vm-edit-diskGb")).to_have_attribute("min", "12")  # grow only, from now

        # a name the server refuses (another VM has it): its error next to the field, nothing changed
        page.locator("#vm-edit-name").fill("edit-running")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#vm-edit-name-error")).to_contain_text("already exists")
        expect(page.locator("#vm-edit-name")).to_have_attribute("aria-invalid", "true")
        p.shot("vm-edit-error")
        page.get_by_role("button", name="Undo edits").click()
        expect(page.locator("#vm-edit-name")).to_have_value("edit-stopped")
        expect(page.locator("#vm-edit-name-error")).to_have_count(0)
        # more RAM than any node has free: accepted, then the job's reason shown
        page.locator("#vm-edit-ramMb").fill("4000000")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("alert").filter(has_text="The change failed")).to_contain_text("RAM", timeout=30_000)
        got = api.get(f"/vms/{stopped}").json()
        assert got["name"] == "edit-stopped" and got["resources"]["ramMb"] == 1024, got
        p.shot("vm-edit-error")

        # a running VM: recorded, marked pending; "Restart to apply" applies it and the mark goes
        page.goto(f"{sim_plane.origin}/ui/#/vms/{running}")
        expect(page.locator("#vm-edit-cpu")).to_have_value("1")
        page.locator("#vm-edit-cpu").fill("2")
        page.locator("#vm-edit-ramMb").fill("768")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#vm-edit-job")).to_have_attribute("data-job-state", "succeeded", timeout=30_000)
        expect(page.locator("#vm-edit-pending")).to_contain_text("Pending: the new vCPUs, memory take effect when the VM restarts")
        expect(page.locator("#vm-status")).to_contain_text("restart to apply")
        got = api.get(f"/vms/{running}").json()
        assert got["pendingRestart"] and sorted(got["pending"]) == ["cpu", "ramMb"], got
        p.shot("vm-edit-pending")
        page.get_by_role("button", name="Restart to apply").click()
        expect(page.locator("#vm-edit-pending")).to_be_empty(timeout=30_000)
        expect(page.locator("#vm-status")).to_have_text("running")
        got = api.get(f"/vms/{running}").json()
        assert not got["pendingRestart"] and got["resources"]["cpu"] == 2 and got["resources"]["ramMb"] == 768, got
    finally:
        p.close()
