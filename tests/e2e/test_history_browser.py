"""The VM list's sortable columns with live CPU and memory, and the last-hour graphs of a VM and
of a node, in Debian's chromium through Playwright against `vmplane serve --driver sim` (issue 23,
item 9). The sim driver measures nothing, so the VMs' samples are written into the server's
store as the sampler would write them (the graphs and the list read stored samples); the
node's come from the server's own sampler. Screenshots are kept under
artifacts/screenshots-history/."""

import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import admin_key, free_port, serve, wait_ready
from .test_ui_browser import CHROMIUM, UNNAMED, require_browser

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots-history"


def _store_samples(db: Path, vm_id: str, node_id: str, cpu: list[float], memory_mb: int) -> None:
    """One sample every 10 s ending now, CPU from `cpu`, counters growing 10 KiB/s."""
    now = time.time()
    rows = [
        (vm_id, now - 10 * (len(cpu) - 1 - i), node_id, c, memory_mb, 1024, None, 10240 * 10 * i, 0, 20480 * 10 * i, 512 * 10 * i)
        for i, c in enumerate(cpu)
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO vm_samples (vm_id, at, node_id, cpu_percent, memory_mb, memory_total_mb, memory_source, "
                         "disk_read_bytes, disk_write_bytes, net_rx_bytes, net_tx_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)  # fmt: skip


def test_the_vm_list_sorts_and_the_history_graphs_draw(tmp_path: Path, record_property: Any) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    # a sampling period of 5 s: the node's graph gains points within the test, and a VM's
    # latest sample counts as current for 3 periods (15 s), while the list is sorted by CPU
    proc = serve(data, port, tmp_path / "server.log", ["--driver", "sim"], env={"VMPLANE_STATS_SAMPLE_SECONDS": "5"})
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    record_property("artifacts", str(SCREENSHOTS))
    try:
        wait_ready(origin, proc)
        key = admin_key(data)
        api = httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": key}, timeout=30)
        made = {}
        for name in ("alpha", "bravo", "charlie"):
            r = api.post("/vms", json={"name": name, "resources": {"cpu": 1, "ramMb": 1024, "diskGb": 1}})
            assert r.status_code == 202, r.text
            made[name] = r.json()
        deadline = time.monotonic() + 60
        while {v["name"]: v["status"] for v in api.get("/vms").json()["items"]} != dict.fromkeys(made, "running"):
            assert time.monotonic() < deadline, api.get("/vms").text
            time.sleep(0.2)
        vms = {v["name"]: v for v in api.get("/vms").json()["items"]}
        node_id = vms["alpha"]["nodeId"]
        # bravo busiest, then charlie, then alpha: the CPU sort must not be the name order
        cpu = {"alpha": 5.0, "bravo": 80.0, "charlie": 40.0}
        for name, vm in vms.items():
            _store_samples(data / "vmplane.db", vm["id"], node_id, [cpu[name] / 2, cpu[name], cpu[name] / 3, cpu[name]], 200 + int(cpu[name]))
        listed = {v["name"]: v["stats"] for v in api.get("/vms").json()["items"]}
        assert listed["bravo"] and listed["bravo"]["cpuPercent"] == 80.0, listed

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def shot(name: str) -> None:
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                assert page.evaluate(UNNAMED) == [], name

            try:
                page.goto(f"{origin}/ui/")
                page.get_by_label("API key").fill(key)
                page.get_by_role("button", name="Sign in").click()
                table = page.locator("#vm-table")
                names = table.locator("tbody tr td[data-label=Name] a")
                expect(names).to_have_text(["alpha", "bravo", "charlie"])  # by name, the default
                expect(table.locator("tbody tr", has_text="bravo").locator("td[data-label=CPU]")).to_have_text("80.0%")
                expect(table.locator("tbody tr", has_text="bravo").locator("td[data-label='Memory used']")).to_have_text("280 MiB")

                cpu_header = table.locator("th[data-sort=cpu]")  # its name gains the ▲/▼ once sorted
                cpu_header.get_by_role("button").click()  # the busiest first
                expect(names).to_have_text(["bravo", "charlie", "alpha"])
                expect(cpu_header).to_have_attribute("aria-sort", "descending")
                shot("vms-sorted-by-cpu")
                cpu_header.get_by_role("button").click()  # again: the other way
                expect(names).to_have_text(["alpha", "charlie", "bravo"])
                expect(cpu_header).to_have_attribute("aria-sort", "ascending")
                name_header = table.locator("th[data-sort=name]")
                name_header.get_by_role("button").click()
                expect(names).to_have_text(["alpha", "bravo", "charlie"])
                expect(cpu_header).not_to_have_attribute("aria-sort", "ascending")
                name_header.get_by_role("button").click()
                expect(names).to_have_text(["charlie", "bravo", "alpha"])
                page.reload()  # the chosen order stays for the session
                expect(names).to_have_text(["charlie", "bravo", "alpha"])
                expect(page.get_by_label("Sort by")).to_have_value("name:descending")
                page.get_by_label("Sort by").select_option("memory:ascending")  # the control small screens use
                expect(names).to_have_text(["alpha", "charlie", "bravo"])
                expect(table.locator("th[data-sort=memory]")).to_have_attribute("aria-sort", "ascending")
                page.set_viewport_size({"width": 390, "height": 800})
                shot("vms-phone")
                assert page.evaluate("document.documentElement.scrollWidth") <= 390
                page.set_viewport_size({"width": 1280, "height": 800})

                # the VM page: its last hour, four samples, the line through them
                names.filter(has_text="bravo").click()
                history = page.locator("#vm-history")
                expect(history.get_by_role("status")).to_contain_text("4 samples")
                cpu_chart = history.locator(".history-chart").first
                expect(cpu_chart).to_have_attribute("data-points", "4")
                d = cpu_chart.locator("path").first.get_attribute("d") or ""
                assert d.startswith("M") and d.count("L") == 3, d
                expect(cpu_chart.get_by_role("img")).to_have_attribute("aria-label", "CPU: 4 samples in the last 60 min, latest 80.0%")
                expect(history.locator(".history-chart", has_text="Network")).to_contain_text("rx 20 KiB/s")
                shot("vm-history")

                # a node: expand its last hour; the server's own sampler keeps adding to it
                page.get_by_role("navigation", name="Main").get_by_role("link", name="Nodes").click()
                page.locator(f"#history-{node_id} summary").click()
                node_chart = page.locator(f"#history-{node_id} .history-chart").first
                # the sample taken at start may precede the VMs; one after them says 3 vCPUs
                expect(node_chart.get_by_role("img")).to_have_attribute(
                    "aria-label", re.compile(r"^vCPUs claimed: \d+ samples in the last 60 min, latest 3$"), timeout=20000
                )
                first = int(node_chart.get_attribute("data-points") or "0")
                page.wait_for_function(
                    f"() => Number(document.querySelector('#history-{node_id} .history-chart').dataset.points) > {first}", timeout=20000
                )  # continues live
                shot("node-history")
                assert errors == []
            finally:
                browser.close()
    finally:
        proc.kill()
        proc.wait()
