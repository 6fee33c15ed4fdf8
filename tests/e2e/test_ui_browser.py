"""The web console in a real browser: Debian's chromium driven by Playwright (never a
downloaded browser) against `vmplane serve --driver qemu`. Sign in, create a tiny-linux VM,
watch it reach `running` without a reload, type `uname -a` into the in-page serial console and
read the answer, take and delete a snapshot, stop and delete the VM from the list. No request
may leave vmplane's origin. Screenshots of every page (and the VM list at phone size) are saved
under artifacts/screenshots/walkthrough/."""

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import admin_key, free_port, qemu_processes_of, require_qemu, serve, wait_ready
from ..ui_support import CHROMIUM, UNNAMED, require_browser, screenshot_dir, terminal_text

pytestmark = pytest.mark.slow

UNAME = re.compile(r"^Linux \S+ \d+\.\d+\.\d+\S* #\d+", re.M)


def test_web_console_drives_a_real_guest(tmp_path: Path, record_property: Any) -> None:
    require_browser()
    require_qemu()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    proc = serve(tmp_path / "data", port, tmp_path / "server.log", ["--driver", "qemu", "--accel", "tcg"])
    SCREENSHOTS = screenshot_dir("walkthrough")
    record_property("artifacts", str(SCREENSHOTS))
    vm_id = None
    try:
        wait_ready(origin, proc, timeout=120)
        key = admin_key(tmp_path / "data")
        api = httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": key}, timeout=30)
        tiny = next(t for t in api.get("/templates").json()["items"] if t["name"] == "tiny-linux")

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            requests: list[str] = []
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def shot(name: str) -> None:
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                assert page.evaluate(UNNAMED) == [], name
                width = page.viewport_size["width"]  # type: ignore[index]
                assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{name} scrolls sideways"

            try:
                # sign in: a wrong key is refused, the right one opens the VM list
                page.goto(f"{origin}/ui/")
                page.get_by_label("API key").fill("vmp_not-a-key")
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("alert")).to_contain_text("not accepted")
                shot("login")
                # the keyboard alone: the key field has the focus, Enter signs in
                page.get_by_label("API key").fill("")
                expect(page.get_by_label("API key")).to_be_focused()
                page.keyboard.type(key)
                page.keyboard.press("Enter")
                expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
                expect(page.get_by_role("heading", name="Virtual machines")).to_be_focused()
                page.keyboard.press("Tab")  # from the page's heading into the filters, with a visible ring
                expect(page.get_by_role("link", name="Create VM").last).to_be_focused()
                assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
                expect(page.locator("#stream-state")).to_have_text("Live")
                page.evaluate("window.sameDocument = 'yes'")  # gone if anything reloads the page
                shot("vms-empty")

                # create a VM; the page moves to its detail view, which follows the event stream
                page.get_by_role("navigation", name="Main").get_by_role("link", name="Create VM").click()
                expect(page.get_by_role("heading", name="Create a VM")).to_be_visible()
                page.get_by_label("Name").fill("web-e2e")
                expect(page.get_by_label("Template")).to_have_value(tiny["id"])
                page.get_by_label("Preset").select_option("small")
                expect(page.get_by_label("Memory (MiB)")).to_have_value("512")
                shot("create")
                page.get_by_role("button", name="Create VM").click()
                expect(page.get_by_role("heading", name="web-e2e")).to_be_visible()
                vm_id = page.url.rsplit("/", 1)[1]
                assert vm_id.startswith("vm-"), page.url
                expect(page.locator("#vm-status")).to_have_text("running", timeout=120_000)
                assert page.evaluate("window.sameDocument") == "yes"

                # the serial console: a real terminal, a real shell
                page.get_by_role("button", name="Connect", exact=True).click()
                expect(page.get_by_text("Connected.")).to_be_visible(timeout=30_000)
                deadline = time.monotonic() + 60
                while not UNAME.search(terminal_text(page)):
                    assert time.monotonic() < deadline, terminal_text(page)
                    page.locator("#console-screen .xterm").click()
                    page.keyboard.type("uname -a")
                    page.keyboard.press("Enter")
                    for _ in range(20):
                        if UNAME.search(terminal_text(page)):
                            break
                        page.wait_for_timeout(250)
                answer = UNAME.search(terminal_text(page)).group(0)  # type: ignore[union-attr]
                page.keyboard.press("Escape")  # then Tab: out of the terminal, for keyboard users
                page.keyboard.press("Tab")
                expect(page.get_by_role("button", name="Disconnect")).to_be_focused()
                assert answer in api.post(f"/vms/{vm_id}/exec", json={"command": ["uname", "-a"]}).json()["stdout"]

                # the stats charts fill in while it runs
                expect(page.locator(".chart figcaption span.muted").first).not_to_have_text("–", timeout=20_000)

                # a snapshot, taken and deleted from the page (the confirmation is the page's own dialog)
                page.get_by_label("New snapshot name").fill("web-snap")
                page.get_by_role("button", name="Take snapshot").click()
                snaps = page.locator("section[aria-labelledby=s-snapshots] tbody")
                expect(snaps).to_contain_text("web-snap", timeout=30_000)
                expect(snaps.locator(".status")).to_have_text("ready", timeout=30_000)
                shot("vm-detail")
                page.get_by_role("button", name="Delete snapshot web-snap").click()
                page.locator("#confirm").get_by_role("button", name="Delete").click()
                expect(page.locator("section[aria-labelledby=s-snapshots]")).to_contain_text("No snapshots.", timeout=30_000)

                nav = page.get_by_role("navigation", name="Main")
                nav.get_by_role("link", name="Jobs").click()
                expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
                expect(page.locator("tbody tr").first).to_be_visible()
                shot("jobs")
                page.locator("tbody tr").filter(has_text="vm-create").get_by_role("link").click()
                expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
                page.get_by_text(re.compile(r"^Log \(\d+ lines\)$")).first.click()
                expect(page.locator("pre.log").first).to_contain_text("running")
                shot("job-detail")
                nav.get_by_role("link", name="Nodes").click()
                expect(page.get_by_role("meter", name="Cluster CPU used")).to_be_visible()
                shot("nodes")
                nav.get_by_role("link", name="Events").click()
                expect(page.get_by_role("log")).to_contain_text("vm.running")
                # events from before sign-in (the server's node.online at start) come back on request
                expect(page.get_by_role("log")).not_to_contain_text("node.online")
                page.get_by_role("button", name="Load earlier events").click()
                expect(page.get_by_role("log")).to_contain_text("node.online")
                shot("events")

                # the VM list, also at phone size
                nav.get_by_role("link", name="VMs").click()
                row = page.locator(f"tr[data-vm-id={vm_id}]")
                expect(row.locator(".status")).to_have_text("running")
                shot("vms")
                page.set_viewport_size({"width": 390, "height": 844})
                expect(row).to_be_visible()
                shot("vms-phone")
                page.get_by_role("link", name="web-e2e").click()
                expect(page.locator("#vm-status")).to_have_text("running")
                shot("vm-detail-phone")
                page.set_viewport_size({"width": 1280, "height": 800})
                page.go_back()

                # stop and delete with the bulk actions, watching the row change without a reload
                page.get_by_label("Select web-e2e").check()
                page.get_by_role("button", name="Stop", exact=True).click()
                expect(row.locator(".status")).to_have_text("stopped", timeout=60_000)
                page.get_by_role("button", name="Delete", exact=True).click()
                page.locator("#confirm").get_by_role("button", name="Delete").click()
                expect(row).to_have_count(0, timeout=60_000)
                expect(page.get_by_text("No VMs yet.")).to_be_visible()
                assert page.evaluate("window.sameDocument") == "yes"
            except BaseException:
                page.screenshot(path=str(SCREENSHOTS / "failure.png"), full_page=True)  # where it stood
                raise
            browser.close()

        assert api.get("/vms").json()["items"] == []
        assert qemu_processes_of(vm_id) == []
        assert errors == [], errors
        assert requests and all(u.startswith(origin + "/") for u in requests), sorted({u for u in requests if not u.startswith(origin)})
        ws_origin = origin.replace("http://", "ws://") + "/"
        assert sockets and all(u.startswith(ws_origin) for u in sockets), sockets
    finally:
        proc.kill()
        proc.wait()
