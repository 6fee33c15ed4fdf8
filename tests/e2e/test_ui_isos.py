"""The web console's ISOs (Templates page) and the create form's boot fields, in a real
browser (Debian's chromium driven by Playwright) against `vmplane serve --driver sim`:
upload an ISO with the browser's progress and see it ready in the ISOs table; a file that is
not an ISO is refused with the server's reason under the field; create a VM with the ISO, the
CD-ROM first and UEFI, and see the API record them; delete the ISO while the VM holds it
(refused, the VM named), then after ejecting it. Screenshots under artifacts/screenshots/isos/."""

from pathlib import Path
from typing import Any

import pytest

from ..iso_support import small_iso

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots" / "isos"


def test_isos_upload_create_with_iso_and_delete(ui_page: Any, ui_sim_server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    page = ui_page(path="#/templates", server=ui_sim_server)
    expect(page.get_by_role("heading", name="ISOs", exact=True)).to_be_visible()

    not_iso = tmp_path / "fake.iso"
    not_iso.write_bytes(b"\0" * 40000)
    page.set_input_files("#iso-up-body", str(not_iso))
    expect(page.locator("#iso-up-name")).to_have_value("fake")
    page.get_by_role("button", name="Add ISO").click()
    expect(page.locator("#iso-up-body-error")).to_contain_text("ISO 9660")

    iso = small_iso(tmp_path / "installer.iso")
    page.set_input_files("#iso-up-body", str(iso))
    page.fill("#iso-up-name", "installer")
    page.get_by_role("button", name="Add ISO").click()
    row = page.locator("#isos tr", has_text="installer")
    expect(row).to_contain_text("ready", timeout=30_000)
    expect(row).to_contain_text("uploaded")
    page.screenshot(path=str(SHOTS / "isos.png"), full_page=True)
    isos = ui_sim_server.api.get("/isos").json()["items"]
    assert [i["name"] for i in isos] == ["installer"] and isos[0]["sizeBytes"] == iso.stat().st_size

    page.goto(f"{ui_sim_server.origin}/ui/#/create")
    page.get_by_label("Name", exact=True).fill("installs")
    page.get_by_label("ISO in the CD-ROM").select_option(isos[0]["id"])  # "installer (shared)": an operator's
    expect(page.get_by_label("Template")).to_have_value("")  # the disk is blank
    expect(page.get_by_label("Boot order")).to_have_value("cdrom,disk")
    page.get_by_label("Firmware").select_option("uefi")
    page.screenshot(path=str(SHOTS / "create.png"), full_page=True)
    page.get_by_role("button", name="Create VM").click()
    page.wait_for_url("**/#/vms/vm-*")
    vm_id = page.url.rsplit("/", 1)[-1]
    vm = ui_sim_server.api.get(f"/vms/{vm_id}").json()
    assert vm["cdrom"] == {"isoId": isos[0]["id"]} and vm["bootOrder"] == ["cdrom", "disk"] and vm["firmware"] == "uefi", vm
    assert vm["templateId"] is None and vm["blank"] is True

    page.goto(f"{ui_sim_server.origin}/ui/#/templates")
    row = page.locator("#isos tr", has_text="installer")
    row.get_by_role("button", name="Delete ISO installer").click()
    page.locator("#confirm-ok").click()
    expect(page.locator(".toast.error")).to_contain_text("installs")  # in its CD-ROM: refused, the VM named
    r = ui_sim_server.api.patch(f"/vms/{vm_id}", json={"cdrom": None})
    assert r.status_code == 202, r.text
    for _ in range(100):
        if ui_sim_server.api.get(f"/vms/{vm_id}").json()["cdrom"] is None:
            break
        page.wait_for_timeout(100)
    row.get_by_role("button", name="Delete ISO installer").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#isos tr", has_text="installer")).to_have_count(0)
    assert ui_sim_server.api.get("/isos").json()["items"] == []
