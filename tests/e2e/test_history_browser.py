"""The VM list's sortable columns with live CPU and memory, and the last-hour graphs of a VM and
of a node, in Debian's chromium through Playwright (issue 23, item 9). The server runs in the
test's event loop (the browser in a thread) on a sim node with a stats path (the sim driver
measures nothing; tests/api/test_stats_history.py's MeteredSimDriver reports the figures the
test sets), so the list's figures and the newest samples come from the server's own sampler;
older samples of the hour are stored as it stores them. Screenshots are kept under
artifacts/screenshots-history/."""

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from vmplane import clock
from vmplane.store.tables import vm_samples

from ..api.test_stats_history import MeteredSimDriver
from ..ui_support import CHROMIUM, UNNAMED, require_browser

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots-history"


async def test_the_vm_list_sorts_and_the_history_graphs_draw(server_factory: Any, record_property: Any) -> None:
    require_browser()
    driver = MeteredSimDriver(hostname="node-1", latency=0.001)
    # a sampling period of 5 s: the node's graph gains points within the test, and a VM's latest
    # sample counts as current for 3 periods (15 s), while the list is sorted by CPU
    server = await server_factory(stats_sample_seconds=5, nodes=[("node-1", driver)])
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    record_property("artifacts", str(SCREENSHOTS))
    ram = {"alpha": 512, "bravo": 2048, "charlie": 1024}
    job = await server.create([{"name": n, "resources": {"cpu": 1, "ramMb": ram[n], "diskGb": 1}} for n in ram])
    ids = dict(zip(("alpha", "bravo", "charlie"), (t["resourceId"] for t in job["tasks"]), strict=True))
    node_id = "node-1"
    # bravo busiest, then charlie, then alpha (the CPU order is not the name order); memory
    # used as the driver reports it, half the VM's RAM: the same order
    cpu = {"alpha": 5.0, "bravo": 80.0, "charlie": 40.0}
    for name, vm_id in ids.items():
        driver.cpu_percent[vm_id] = cpu[name]
    async with server.rt.store.write() as conn:  # the hour before: three samples 10 s apart
        now = clock.now()
        await conn.execute(insert(vm_samples), [
            {"vm_id": vm_id, "node_id": node_id, "at": now - 10 * k, "cpu_percent": cpu[name] / k, "memory_mb": 100, "memory_total_mb": 1024,
             "memory_source": None, "disk_read_bytes": 0, "disk_write_bytes": 0, "net_rx_bytes": 0, "net_tx_bytes": 0}
            for name, vm_id in ids.items() for k in (3, 2, 1)
        ])  # fmt: skip
    await server.rt.stats_history.tick()  # the server's sampler: the newest sample of each
    listed = {v["name"]: v["stats"] for v in (await server.client.get("/api/v1/vms")).json()["items"]}
    assert listed["bravo"] and listed["bravo"]["cpuPercent"] == 80.0, listed

    def browse() -> None:
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def shot(name: str) -> None:
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                assert page.evaluate(UNNAMED) == [], name

            try:
                page.goto(f"{server.url}/ui/")
                page.get_by_label("API key").fill(server.admin_key)
                page.get_by_role("button", name="Sign in").click()
                table = page.locator("#vm-table")
                names = table.locator("tbody tr td[data-label=Name] a")
                expect(names).to_have_text(["alpha", "bravo", "charlie"])  # by name, the default
                bravo = table.locator("tbody tr", has_text="bravo")
                expect(bravo.locator("td[data-label=CPU]")).to_have_text("80.0%")
                expect(bravo.locator("td[data-label='Memory used']")).to_have_text("1 GiB")

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
                page.get_by_label("Sort by").select_option("memory:descending")  # the control small screens use
                expect(names).to_have_text(["bravo", "charlie", "alpha"])
                expect(table.locator("th[data-sort=memory]")).to_have_attribute("aria-sort", "descending")
                page.set_viewport_size({"width": 390, "height": 800})
                shot("vms-phone")
                assert page.evaluate("document.documentElement.scrollWidth") <= 390
                page.set_viewport_size({"width": 1280, "height": 800})

                # the VM page: its last hour (three stored samples, then the sampler's), a line through them
                names.filter(has_text="bravo").click()
                history = page.locator("#vm-history")
                expect(history.get_by_role("status")).to_contain_text(re.compile(r"\d+ samples, one every 5 s"))
                cpu_chart = history.locator(".history-chart").first
                expect(cpu_chart.get_by_role("img")).to_have_attribute(
                    "aria-label", re.compile(r"^CPU: \d+ samples in the last 60 min, latest 80\.0%$")
                )
                points = int(cpu_chart.get_attribute("data-points") or "0")
                d = cpu_chart.locator("path").first.get_attribute("d") or ""
                assert points >= 4 and d.startswith("M") and d.count("L") == points - 1, (points, d)
                expect(history.locator(".history-chart", has_text="Network")).to_contain_text(re.compile(r"rx [\d.]+ (B|KiB)/s"))
                shot("vm-history")

                # a node: expand its last hour; the server's own sampler keeps adding to it
                page.get_by_role("navigation", name="Main").get_by_role("link", name="Nodes").click()
                page.locator(f"#history-{node_id} summary").click()
                node_chart = page.locator(f"#history-{node_id} .history-chart").first
                expect(node_chart.get_by_role("img")).to_have_attribute(
                    "aria-label", re.compile(r"^vCPUs claimed: \d+ samples in the last 60 min, latest 3$")
                )
                first = int(node_chart.get_attribute("data-points") or "0")
                page.wait_for_function(
                    f"() => Number(document.querySelector('#history-{node_id} .history-chart').dataset.points) > {first}", timeout=20000
                )  # continues live
                shot("node-history")
                assert errors == []
            finally:
                browser.close()

    await asyncio.to_thread(browse)
