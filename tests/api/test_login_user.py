"""Templates know their login user (`loginUser`): the default from `os`, set on create, PATCH
and imports, refused when it is no Unix user name; a VM keeps the one it was made with (its
`ssh.user`, Blue Lobster's `vm_username`), clones keep their source's; the seed vmplane writes
puts the SSH keys on it. On sim nodes (the real guest: tests/e2e/test_qemu_cli.py)."""

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from vmplane.domain import Resources, SshForward, VmSpec
from vmplane.drivers.qemu.seed import seed_files
from vmplane.store import Store
from vmplane.store import vms as vm_q
from vmplane.store.tables import templates

from ..contract.test_migration_names import on_connection, tpl, upgrade_to
from ..e2e.test_ui_browser import CHROMIUM, require_browser
from ..support import Server, admin_key, free_port, make_template, serve, wait_ready, wait_until

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtestkeytestkeytestkeytestkeytestkey me@host"


async def make_vm(server: Server, body: dict[str, Any]) -> str:
    job = await server.create(body)
    assert job["state"] == "succeeded", job
    return str(job["tasks"][0]["resourceId"])


async def ssh_user(server: Server, vm_id: str) -> str:
    """The VM's `ssh.user` as the API shows it, once it has an SSH forward (sim nodes forward
    no port: the one the qemu driver records is written into its spec here)."""
    async with server.rt.store.write() as conn:
        vm = await vm_q.get_vm(conn, vm_id)
        assert vm is not None
        await vm_q.set_vm(conn, vm_id, spec=vm.spec.with_(ssh=SshForward(22022, None)).to_json())
    ssh = (await server.client.get(f"/api/v1/vms/{vm_id}")).json()["ssh"]
    assert ssh["port"] == 22022
    return str(ssh["user"])


async def test_the_login_user_defaults_from_os_and_is_set_on_create_and_patch(server: Server, tmp_path: Path) -> None:
    defaults = {"debian": "debian", "ubuntu": "ubuntu", "fedora": "fedora", "tiny-linux": "root", "linux": "root", "alpine": "root"}
    for os_, user in defaults.items():
        assert (await make_template(server, tmp_path, f"t-{os_}", os=os_))["loginUser"] == user, os_
    listed = {t["name"]: t["loginUser"] for t in (await server.client.get("/api/v1/templates")).json()["items"]}
    assert listed["t-debian"] == "debian" and listed["t-linux"] == "root"
    assert (await make_template(server, tmp_path, "golden", os="debian", loginUser="admin_1"))["loginUser"] == "admin_1"

    tpl = await make_template(server, tmp_path, "changing", os="linux")
    r = await server.client.patch(f"/api/v1/templates/{tpl['id']}", json={"loginUser": "cloud-user"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.get(f"/api/v1/templates/{tpl['id']}")).json()["loginUser"] == "cloud-user"
    r = await server.client.patch(f"/api/v1/templates/{tpl['id']}", json={"os": "debian"})  # a new os label keeps the login user
    await server.wait_job(r.json()["jobId"])
    after = (await server.client.get(f"/api/v1/templates/{tpl['id']}")).json()
    assert (after["os"], after["loginUser"]) == ("debian", "cloud-user")


@pytest.mark.parametrize("bad", ["Admin", "1user", "-user", "us er", "user\n", "a" * 33, "", "root;id", "ünï", 7])
async def test_a_login_user_that_is_no_unix_user_name_is_refused_naming_the_field(server: Server, tmp_path: Path, bad: Any) -> None:
    img = tmp_path / "x.raw"
    img.write_bytes(b"\x55" * 4096)
    before = (await server.client.get("/api/v1/templates")).json()["items"]
    r = await server.client.post("/api/v1/templates", json={"name": "refused", "os": "debian", "sourceUrl": f"file://{img}", "loginUser": bad})
    assert r.status_code == 400 and r.json()["details"]["field"] == "loginUser", r.text
    assert "user name" in r.json()["error"] or not isinstance(bad, str), r.text  # says what a login user is
    assert (await server.client.get("/api/v1/templates")).json()["items"] == before  # nothing made
    tpl = await make_template(server, tmp_path, "kept", os="debian")
    r = await server.client.patch(f"/api/v1/templates/{tpl['id']}", json={"loginUser": bad})
    assert r.status_code == 400 and r.json()["details"]["field"] == "loginUser", r.text
    assert (await server.client.get(f"/api/v1/templates/{tpl['id']}")).json()["loginUser"] == "debian"


async def test_a_vm_keeps_the_login_user_it_was_made_with(server: Server, tmp_path: Path) -> None:
    tpl = await make_template(server, tmp_path, "deb", os="debian")
    first = await make_vm(server, {"name": "deb-1", "templateId": tpl["id"], "sshKeys": [KEY]})
    assert await ssh_user(server, first) == "debian"
    r = await server.client.post(f"/api/v1/vms/{first}/snapshots", json={"name": "s1"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap_id = r.json()["snapshotId"]

    r = await server.client.patch(f"/api/v1/templates/{tpl['id']}", json={"loginUser": "admin"})
    await server.wait_job(r.json()["jobId"])
    assert await ssh_user(server, first) == "debian"  # the template's change leaves the VM as it was made
    second = await make_vm(server, {"name": "deb-2", "templateId": tpl["id"]})
    assert await ssh_user(server, second) == "admin"
    clone = await make_vm(server, {"name": "deb-clone", "snapshotId": snap_id})
    assert await ssh_user(server, clone) == "debian"  # its source VM's, not the template's of today

    # a VM from before templates knew their login user: root, as it was shown then
    async with server.rt.store.write() as conn:
        vm = await vm_q.get_vm(conn, second)
        assert vm is not None
        await vm_q.set_vm(conn, second, spec={k: v for k, v in vm.spec.to_json().items() if k != "loginUser"})
    assert await ssh_user(server, second) == "root"


async def test_blue_lobster_shows_the_login_user_of_a_vm_made_elsewhere(server: Server, tmp_path: Path) -> None:
    tpl = await make_template(server, tmp_path, "deb", os="debian")
    vm_id = await make_vm(server, {"name": "native-deb", "templateId": tpl["id"]})
    uuid = (await server.client.get(f"/api/v1/vms/{vm_id}")).json()["uuid"]
    r = await server.client.get(f"/compat/bluelobster/api/v1/instances/{uuid}")
    assert r.status_code == 200, r.text
    assert r.json()["vm_username"] == "debian"


async def test_imports_take_a_login_user(server: Server, tmp_path: Path) -> None:
    if subprocess.run(["which", "qemu-img"], capture_output=True).returncode != 0:
        pytest.skip("qemu-img is not installed")
    drop = server.rt.data_dir / "imports"
    drop.mkdir(parents=True, exist_ok=True)
    disk = drop / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "16M"], check=True, capture_output=True)
    r = await server.client.post("/api/v1/imports", json={"source": {"type": "disk", "path": str(disk)}, "loginUser": "Bad User"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "loginUser", r.text
    assert (await server.client.get("/api/v1/imports")).json()["items"] == []

    for name, login, expected in (("with-login", "centos", "centos"), ("without", None, "root")):
        body = {"source": {"type": "disk", "path": str(disk)}, "name": name, "start": False, **({"loginUser": login} if login else {})}
        r = await server.client.post("/api/v1/imports", json=body)
        assert r.status_code == 202, r.text
        assert (await server.wait_job(r.json()["jobId"], timeout=90))["state"] == "succeeded"
        imp = (await server.client.get(f"/api/v1/imports/{r.json()['importId']}")).json()
        assert imp["options"].get("loginUser") == login
        assert await ssh_user(server, imp["vmId"]) == expected


def seed_user_data(**extra: Any) -> str:
    spec = VmSpec(id="vm-1", uuid="u-1", name="one", resources=Resources(1, 256, 1), template_id=None, extra=extra)
    return seed_files(spec)["user-data"].decode()


def test_the_seed_puts_the_keys_on_the_login_user() -> None:
    # a distribution's user: made cloud-init's default user, which the keys go to
    debian = seed_user_data(loginUser="debian", sshKeys=[KEY])
    assert debian == f'#cloud-config\nuser:\n  name: "debian"\nssh_authorized_keys:\n  - "{KEY}"\n'
    # root (tiny-linux, any os without a distribution's user): cloud-init must let root in with them
    assert seed_user_data(loginUser="root", sshKeys=[KEY]) == f'#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - "{KEY}"\n'
    assert seed_user_data(loginUser="root") == "#cloud-config\n"
    # user-data the user gave is theirs: the keys go to meta-data, the user-data as written
    files = seed_files(VmSpec(id="vm-1", uuid="u-1", name="one", resources=Resources(1, 256, 1), template_id=None,
                              extra={"loginUser": "debian", "sshKeys": [KEY], "cloudInit": {"userData": "#cloud-config\nusers: []\n"}}))  # fmt: skip
    assert files["user-data"] == b"#cloud-config\nusers: []\n" and KEY in files["meta-data"].decode()
    # a VM from before VMs knew their login user: as before
    assert seed_user_data(sshKeys=[KEY]) == f'#cloud-config\nssh_authorized_keys:\n  - "{KEY}"\n'


async def test_the_migration_gives_existing_templates_the_login_user_of_their_os(empty_database_url: str) -> None:
    """Templates made before 0027 (SQLite and PostgreSQL): each gets the one its os implies."""
    rows = {"debian": "debian", "ubuntu": "ubuntu", "fedora": "fedora", "linux": "root", "tiny-linux": "root", "centos": "root"}
    await on_connection(empty_database_url, upgrade_to("0026"))
    await on_connection(empty_database_url, lambda conn: conn.execute(insert(templates), [{**tpl(f"tpl-{os_}", os_, None), "os": os_} for os_ in rows]))
    store = Store(empty_database_url)  # what a server does at start: upgrade to head
    await store.open()
    await store.close()
    got = await on_connection(empty_database_url, lambda conn: {r.os: r.login_user for r in conn.execute(select(templates.c.os, templates.c.login_user))})
    assert got == rows


@pytest.mark.slow
def test_the_web_console_says_whom_the_keys_are_for(tmp_path: Path) -> None:
    """The create page names the chosen template's login user beside the SSH keys (it said
    root for every template); Debian's chromium through Playwright, on a sim server."""
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    proc = serve(tmp_path / "data", port, tmp_path / "server.log", ["--driver", "sim"])
    try:
        wait_ready(origin, proc)
        key = admin_key(tmp_path / "data")
        api = httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": key}, timeout=30)
        ids = {}
        for name, os_ in (("deb", "debian"), ("plain", "linux")):
            img = tmp_path / f"{name}.raw"
            img.write_bytes(b"\x55" * 4096)
            r = api.post("/templates", json={"name": name, "os": os_, "sourceUrl": f"file://{img}"})
            ids[name] = r.json()["templateId"]
            wait_until(lambda: api.get(f"/jobs/{r.json()['jobId']}").json()["state"] == "succeeded", 60, "the template import")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page()
            page.goto(f"{origin}/ui/")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Virtual machines")).to_be_visible()
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Create VM").click()
            page.get_by_label("Template").select_option(ids["deb"])
            expect(page.get_by_label("SSH public keys")).to_have_accessible_description(re.compile(r"as debian "))
            page.get_by_label("Template").select_option(ids["plain"])
            expect(page.get_by_label("SSH public keys")).to_have_accessible_description(re.compile(r"as root "))
            browser.close()
    finally:
        proc.kill()
        proc.wait()
