"""The CLI for people (issue 23): sizes with units, errors in the words the user typed, readable
`vm get`/`job get`, jobs that end saying what happened by name, "did you mean", resize/rename/
edit, `template list`, every --help, and tables whose ID column survives 80 columns under tmux."""

import asyncio
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import typer
from click.testing import CliRunner
from typer.main import get_command

from vmplane.cli import commands
from vmplane.cli.client import Client
from vmplane.cli.helptext import humanize, walk
from vmplane.cli.units import disk_gb, ram_mb

from ..api.test_tenancy import new_org
from ..support import Server, free_port, make_template


async def cli(server: Server | str, *args: str, key: str | None = None) -> tuple[int, str, str]:
    url = server if isinstance(server, str) else server.url
    env = {**os.environ, "VMPLANE_API_KEY": key or (server.admin_key if isinstance(server, Server) else "none")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "ignore", "-m", "vmplane.cli.main", *args, "--url", url,
        stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), " ".join(err.decode().split())  # rich wraps long errors


def test_sizes_take_units_and_say_the_rule() -> None:
    assert [ram_mb(s) for s in ("512", "512M", "512MiB", "2G", "2GiB", "2g", "1T", "1024K")] == [512, 512, 512, 2048, 2048, 2048, 1048576, 1]
    assert [disk_gb(s) for s in ("20", "20G", "20GiB", "1T", "1TiB")] == [20, 20, 20, 1024, 1024]
    assert disk_gb(10) == 10  # the option's default comes through as it is
    for bad, flag in (("2lots", "--ram-mb"), ("1000MB", "--ram-mb"), ("-1", "--ram-mb"), ("1.5", "--ram-mb")):
        with pytest.raises(typer.BadParameter) as info:
            ram_mb(bad)
        assert info.value.param_hint == flag
    with pytest.raises(typer.BadParameter, match="953.67 MiB; give a whole number of MiB: 953 or 954"):
        ram_mb("1000MB")
    with pytest.raises(typer.BadParameter, match="give a whole number of GiB: 18 or 19"):
        disk_gb("20GB")  # 20 * 10^9 bytes = 18.63 GiB: never rounded behind the caller's back
    with pytest.raises(typer.BadParameter):
        ram_mb("2GB")  # 1907.35 MiB


@pytest.mark.parametrize(
    ("field", "message", "said"),
    [
        ("[1].resources.ramMb", "Input should be less than or equal to 4194304", "--ram-mb (b): must be at most 4194304 MiB"),
        ("name", "name 'Bad Name' is not valid", "NAME: 'Bad Name' is not valid"),
        ("[0].name", "[0].name: a VM named 'web' already exists", "NAME (a): a VM named 'web' already exists"),
        ("sshKeys[1]", "sshKeys[1]: not an SSH public key", "--ssh-key (the 2nd): not an SSH public key"),
        ("spec.unknownThing", "spec.unknownThing: bad", "spec.unknownThing: bad"),  # no option sets it: the API's path
    ],
)
def test_server_fields_become_the_options_typed(field: str, message: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = Client("http://127.0.0.1:9")
    c.items = ["a", "b"]
    with pytest.raises(typer.Exit):
        c._fail(httpx.Response(400, json={"error": message, "details": {"field": field}}))
    assert " ".join(capsys.readouterr().err.split()) == f"error (400): {said}"


def test_every_help_reads_as_if_a_person_wrote_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    cmd = humanize(get_command(commands.app))  # what `main()` runs
    paths = list(walk(cmd))
    assert ("vm", "resize") in paths and ("template", "list") in paths and len(paths) > 30
    for path in paths:
        res = CliRunner().invoke(cmd, [*path, "--help"], prog_name="vmplane")
        assert res.exit_code == 0, (path, res.output)
        for typer_speak in ("<bool>", "<int>", "<str>", "<list", "{", "INTEGER", "BOOLEAN"):
            assert typer_speak not in res.output, (path, typer_speak, res.output)
    res = CliRunner().invoke(cmd, ["vm", "create", "--help"], prog_name="vmplane")
    assert "NAME..." in res.output and "--wait" in res.output and "--no-wait" in res.output and "SIZE" in res.output
    assert "2G (= 2GiB = 2048 MiB), 2GB (powers of 1000); a plain number is MiB" in " ".join(res.output.split())


async def test_errors_are_in_the_words_the_user_typed(server: Server, tmp_path: Path) -> None:
    code, _, err = await cli(server, "vm", "create", "small", "--ram-mb", "4")
    assert (code, err) == (1, "error (400): --ram-mb: must be at least 64 MiB")
    code, _, err = await cli(server, "vm", "create", "a", "b", "--ram-mb", "99999999")
    assert code == 1 and "--ram-mb (a): must be at most 4194304 MiB" in err and "resources" not in err
    code, _, err = await cli(server, "vm", "create", "c", "--disk-gb", "20GB")
    assert code == 2 and "--disk-gb" in err and "18 or 19" in err
    code, out, err = await cli(server, "vm", "create", "big", "--ram-mb", "2G", "--disk-gb", "20GiB", "--no-start", "--json")
    assert code == 0, err
    vms = (await server.client.get("/api/v1/vms")).json()["items"]
    assert [(v["name"], v["resources"]["ramMb"], v["resources"]["diskGb"]) for v in vms] == [("big", 2048, 20)]  # the refused ones: nothing
    # did you mean: the caller's own VMs and templates, never another organization's
    await make_template(server, tmp_path, "tiny-web")
    _, other = await new_org(server)
    r = await other.post("/api/v1/vms", json=[{"name": "bog"}])
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"], client=other))["state"] == "succeeded"
    code, _, err = await cli(server, "vm", "get", "bgi")
    assert code == 1 and err.endswith("did you mean big?") and "bog" not in err
    code, _, err = await cli(server, "vm", "create", "t", "--template", "tiny-wbe")
    assert code == 1 and "--template: 'tiny-wbe' does not exist; did you mean tiny-web?" in err
    code, _, err = await cli(server, "vm", "get", "zzzzzz")
    assert code == 1 and "did you mean" not in err
    # a server that is not there: a sentence, not [Errno 111]
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await cli(url, "vm", "list")
    assert (code, err) == (2, f"error: cannot reach vmplane at {url}: connection refused; is `vmplane serve` running?")


async def test_a_private_key_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0 me@host\n")
    with socket.socket() as listener:  # a "server" that records whether anyone called
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for given in (f"@{private}", private.read_text()):
            code, _, err = await cli(url, "vm", "create", "web", "--ssh-key", given)
            assert code == 2 and "--ssh-key: that is a private key; give the .pub file" in err, err
        assert f"(@{private}.pub)" in (await cli(url, "vm", "create", "web", "--ssh-key", f"@{private}"))[2]
        code, _, err = await cli(url, "vm", "create", "web", "--ssh-key", f"@{tmp_path}/nope.pub")
        assert (code, err) == (2, f"error: --ssh-key: cannot read {tmp_path}/nope.pub: no such file or directory")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: the key never left


async def test_summaries_and_outcomes_by_name(server: Server) -> None:
    code, out, err = await cli(server, "vm", "create", "web", "web-2", "--cpu", "2", "--ram-mb", "1G")
    assert (code, out) == (0, "web and web-2 are running\n"), err
    code, out, _ = await cli(server, "vm", "get", "web")
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["name"].strip() == "web" and lines["resources"].strip() == "2 vCPUs, 1 GiB RAM, 10 GiB disk"
    assert lines["status"].strip().startswith("running") and lines["id"].strip().startswith("vm-")
    vm = json.loads((await cli(server, "vm", "get", "web", "--json"))[1])
    assert vm["name"] == "web" and vm["resources"]["ramMb"] == 1024  # --json: the API's JSON
    job_id = (await cli(server, "vm", "stop", "web-2", "--no-wait"))[1].strip()
    code, out, err = await cli(server, "job", "wait", job_id)
    assert code == 0 and out == f"job {job_id} succeeded: web-2 is stopped\n", err
    code, out, _ = await cli(server, "job", "get", job_id)
    fields = [(label, value.strip()) for label, value in (line.split(":", 1) for line in out.splitlines())]
    assert ("outcome", "web-2 is stopped") in fields and ("task", "web-2: succeeded") in fields and not out.startswith("{")
    assert json.loads((await cli(server, "job", "get", job_id, "--json"))[1])["id"] == job_id
    # delete: a running VM needs --force (not a terminal: refused, not asked); a stopped one does not
    code, _, err = await cli(server, "vm", "delete", "web", "web-2")
    assert code == 1 and err == "error: web is running; stop it first (vmplane vm stop) or give --force: nothing deleted"
    code, out, _ = await cli(server, "vm", "delete", "web-2")
    assert (code, out) == (0, "web-2 deleted\n")
    code, out, _ = await cli(server, "vm", "delete", "web", "--force")
    assert (code, out) == (0, "web deleted\n")
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []


async def test_resize_rename_and_edit(server: Server) -> None:
    assert (await cli(server, "vm", "create", "web"))[0] == 0
    code, out, err = await cli(server, "vm", "resize", "web", "--cpu", "2", "--ram-mb", "1G")
    assert (code, out) == (0, "web: 2 vCPUs and 1 GiB RAM after restart; `vmplane vm restart web`\n"), err
    vm = (await server.client.get("/api/v1/vms", params={"name": "web"})).json()["items"][0]
    assert vm["pendingRestart"] and set(vm["pending"]) == {"cpu", "ramMb"}
    code, out, _ = await cli(server, "vm", "restart", "web")
    assert (code, out) == (0, "web restarted\n")
    vm = (await server.client.get(f"/api/v1/vms/{vm['id']}")).json()
    assert not vm["pendingRestart"] and (vm["resources"]["cpu"], vm["resources"]["ramMb"]) == (2, 1024)
    code, _, err = await cli(server, "vm", "resize", "web", "--disk-gb", "5")
    assert code == 1 and err.startswith("error (400): --disk-gb: cannot shrink")
    code, _, err = await cli(server, "vm", "resize", "web")
    assert code == 2 and "give --cpu, --ram-mb or --disk-gb" in err
    code, out, err = await cli(server, "vm", "rename", "web", "web-1")
    assert (code, out) == (0, "web-1: renamed from web\n"), err
    code, out, err = await cli(server, "vm", "edit", "web-1", "--display-name", "My web", "--tag", "a", "--tag", "b")
    assert (code, out) == (0, "web-1: shown as 'My web' and tags a, b\n"), err
    code, _, err = await cli(server, "vm", "rename", "web-1", "Bad Name")
    assert code == 1 and err.startswith("error (400): NEW_NAME: ") and "web-1" == (await server.client.get(f"/api/v1/vms/{vm['id']}")).json()["name"]
    code, _, err = await cli(server, "vm", "edit", "web-1", "--name", "Bad Name", "--cpu", "1")
    assert code == 1 and err.startswith("error (400): --name: ")
    code, _, err = await cli(server, "vm", "edit", "web-1")
    assert code == 2 and "nothing to change" in err


async def test_template_list(server: Server, tmp_path: Path) -> None:
    await make_template(server, tmp_path, "tiny-web", loginUser="debian")
    code, out, _ = await cli(server, "template", "list", "--json")
    (t,) = [t for t in json.loads(out) if t["name"] == "tiny-web"]
    code, out, _ = await cli(server, "template", "list")
    row = next(line for line in out.splitlines() if "tiny-web" in line)
    assert code == 0 and t["id"] in row and "debian" in row


async def test_tables_keep_the_id_whole_at_80_columns_under_tmux(server: Server, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    names = [f"a-rather-long-vm-name-for-eighty-columns-{i}" for i in range(3)]
    await server.create([{"name": n, "tags": ["some-tag"]} for n in names])
    template = await make_template(server, tmp_path, "a-template-with-a-long-name-too", loginUser="debian")
    token = (await server.client.post("/api/v1/nodes/tokens", json={"description": "a long description " * 3})).json()
    vms = (await server.client.get("/api/v1/vms")).json()["items"]
    jobs = (await server.client.get("/api/v1/jobs")).json()["items"]
    script = tmp_path / "run.sh"
    vmplane = f"{shlex.quote(sys.executable)} -W ignore -m vmplane.cli.main"
    script.write_text(
        f"export VMPLANE_URL={server.url} VMPLANE_API_KEY={server.admin_key} PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))}\n"
        + "".join(f"{vmplane} {c}\n" for c in ("vm list", "job list", "template list", "node list", "node token list"))
        + f"{vmplane} vm delete {names[0]}\necho deleted-$?\nsleep 60\n"
    )
    sock = f"vmplane-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", f"bash --norc {script}"], check=True)
    try:

        async def pane_until(marker: str) -> str:
            for _ in range(300):
                text = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-2000", "-t", "t"], capture_output=True, text=True).stdout
                if marker in text:
                    return text
                await asyncio.sleep(0.1)  # the server runs in this event loop
            raise AssertionError(f"{marker!r} never appeared:\n{text}")

        text = await pane_until("delete it? [y/N]")  # a terminal: asked, not refused
        assert f"{names[0]} is running; delete it? [y/N]" in text
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80
        for full_id in [v["id"] for v in vms] + [j["id"] for j in jobs] + [template["id"], token["id"], "node-1"]:
            assert any(full_id in line for line in lines), f"{full_id} cut at 80 columns:\n{text}"
        subprocess.run([*tmux, "send-keys", "-t", "t", "y", "Enter"], check=True)
        text = await pane_until("deleted-")
        assert f"{names[0]} deleted" in text and "deleted-0" in text
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert len((await server.client.get("/api/v1/vms")).json()["items"]) == 2
