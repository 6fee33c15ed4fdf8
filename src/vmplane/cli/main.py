"""Command definitions."""

import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from . import show, units
from .client import Client, err, interactive, refuse_private_key, unreachable
from .show import job_summary, outcome, print_fields, print_table, vm_summary

# The commands that run a process (serve, agent, mcp, image build) import it inside their
# function, and only those imports are inside functions: the client commands and --help start
# in 0.11 s, where importing the server, the agent and the image builder too takes 1.6 s
# (measured on the 2-core test machine). None of them dodges a cycle: the CLI is the top layer.

app = typer.Typer(no_args_is_help=True, help="vmplane: a control plane for virtual machines.")
vm_app = typer.Typer(no_args_is_help=True, help="Manage VMs.")
job_app = typer.Typer(no_args_is_help=True, help="Inspect and wait for jobs.")
node_app = typer.Typer(no_args_is_help=True, help="Inspect and manage nodes.")
token_app = typer.Typer(no_args_is_help=True, help="Join tokens for node agents (operators).")
app.add_typer(vm_app, name="vm")
app.add_typer(job_app, name="job")
app.add_typer(node_app, name="node")
node_app.add_typer(token_app, name="token")
image_app = typer.Typer(no_args_is_help=True, help="Build guest images.")
app.add_typer(image_app, name="image")
out = Console()

UrlOpt = Annotated[str | None, typer.Option("--url", help="server URL (env VMPLANE_URL)", envvar="VMPLANE_URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print raw JSON")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the job to end")]
VmArg = Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="the VM's name or id")]


def main() -> None:
    """Entry point of the `vmplane` command."""
    from . import commands  # noqa: F401  (registers `template`, `vm resize|rename|edit`)
    from .helptext import humanize

    humanize(typer.main.get_command(commands.app))(prog_name="vmplane")  # commands.app: this module's `app` also under `python -m`


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where state lives")] = Path(".vmplane"),
    database_url: Annotated[str | None, typer.Option("--database-url", help="sqlite:///… or postgresql+asyncpg://…")] = None,
    driver: Annotated[str, typer.Option(help="auto | qemu | sim")] = "auto",
    accel: Annotated[str, typer.Option(help="QEMU accelerator: auto | kvm | tcg")] = "auto",
    sim_nodes: Annotated[int, typer.Option("--sim-nodes", help="simulated nodes (sim driver); 0: no local node at all, for a fleet of `vmplane agent`s")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="no authentication (loopback only)")] = False,
    face: Annotated[
        list[str] | None,
        typer.Option(
            "--face", metavar="NAME=HOST:PORT[,as-key-file=PATH[,allow-remote]]",
            help="also serve face NAME (native, fastvm, ...) at the root of a listener of its own, for clients that drop "
            "the path of their base URL (repeatable); as-key-file: requests there without credentials act as the API key "
            "in PATH (loopback only unless allow-remote)",
        ),
    ] = None,
) -> None:
    """Serve vmplane over HTTP. On first start it writes an owner API key to DATA_DIR/admin-api-key."""
    from dataclasses import replace

    from pydantic import ValidationError

    from ..app import create_app
    from ..config import Settings
    from ..logs import install_scrubbing
    from .serving import Listener, bind, parse_face, read_key_file, run, serve_all

    install_scrubbing()  # keys and tokens in query strings never reach a log line
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per call to a node agent
    # The server keeps many long-lived objects; with the default thresholds the collector's
    # full passes stalled requests for ~100 ms (p99 of GET /vms/{id}: 120 ms -> 21 ms).
    gc.set_threshold(50_000, 50, 50)
    try:
        settings = Settings(data_dir=data_dir, database_url=database_url, driver=driver, accel=accel, sim_nodes=sim_nodes, insecure_no_auth=insecure_no_auth)
    except ValidationError as exc:
        first = exc.errors()[0]
        typer.echo(f"error: --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", err=True)
        raise typer.Exit(2) from None
    listeners = [Listener(None, host, port)]
    for value in face or []:
        try:
            listeners.append(parse_face(value))
        except ValueError as exc:
            typer.echo(f"error: --face: {exc}", err=True)
            raise typer.Exit(2) from None
    seen: set[tuple[str, int]] = set()
    for i, lis in enumerate(listeners):
        if lis.as_key_file is not None:
            if not is_loopback(lis.host) and not lis.allow_remote:
                typer.echo(
                    f"error: --face {lis.face}: as-key-file on {lis.host}, not a loopback address, lets anyone who reaches it act as "
                    "that key; add ,allow-remote if that is what you want", err=True,
                )  # fmt: skip
                raise typer.Exit(2)
            try:
                listeners[i] = replace(lis, as_key=read_key_file(lis.as_key_file))
            except ValueError as exc:
                typer.echo(f"error: --face {lis.face}: {exc}", err=True)
                raise typer.Exit(2) from None
        if settings.insecure_no_auth and not is_loopback(lis.host):
            typer.echo(f"error: --insecure-no-auth is only allowed on loopback addresses, not {lis.host}", err=True)
            raise typer.Exit(2)
        if (lis.host, lis.port) in seen:
            typer.echo(f"error: {lis.address} is given twice", err=True)
            raise typer.Exit(2)
        seen.add((lis.host, lis.port))
    try:
        socks = [bind(lis) for lis in listeners]
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    # `vmplane is ready: …/ui/ (API key in …)` once it answers (serving.ready_lines)
    if not run(serve_all(create_app(settings), list(zip(listeners, socks)), log_level)):
        raise typer.Exit(3)  # the application did not start (as uvicorn.run exits)


@app.command()
def agent(
    control_plane: Annotated[str, typer.Option("--control-plane", help="the control plane's URL (http://HOST:PORT)")],
    join_token: Annotated[
        str | None, typer.Option("--join-token", envvar="VMPLANE_JOIN_TOKEN", help="a token from `vmplane node token create` (first start only)")
    ] = None,
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="where to serve the driver to the control plane")] = "127.0.0.1:8081",
    driver: Annotated[str, typer.Option(help="qemu | sim")] = "qemu",
    data_dir: Annotated[Path, typer.Option("--data-dir", help="the node's state: VMs, images, its credential")] = Path(".vmplane-agent"),
    advertise_url: Annotated[str | None, typer.Option("--advertise-url", help="the URL the control plane reaches this agent at (default: http://LISTEN)")] = None,
    hostname: Annotated[str | None, typer.Option(help="the node's host name as the control plane shows it")] = None,
    accel: Annotated[str, typer.Option(help="QEMU accelerator: auto | kvm | tcg")] = "auto",
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run a node agent on a hypervisor host: join the control plane, heartbeat, serve the local driver."""
    from urllib.parse import urlparse

    from ..agent.daemon import Agent, AgentConfig, AgentRefused
    from ..logs import install_scrubbing
    from .serving import run

    install_scrubbing()  # keys and tokens in query strings never reach a log line
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    if driver not in ("qemu", "sim"):
        typer.echo("error: --driver must be qemu or sim", err=True)
        raise typer.Exit(2)
    if accel not in ("auto", "kvm", "tcg"):
        typer.echo("error: --accel must be auto, kvm or tcg", err=True)
        raise typer.Exit(2)
    cp = urlparse(control_plane)
    if cp.scheme not in ("http", "https") or not cp.hostname:
        typer.echo("error: --control-plane must be an http(s) URL", err=True)
        raise typer.Exit(2)
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        typer.echo("error: --listen must be HOST:PORT", err=True)
        raise typer.Exit(2)
    cfg = AgentConfig(
        control_plane=control_plane, join_token=join_token, listen_host=host, listen_port=int(port), driver=driver,
        data_dir=data_dir, advertise_url=advertise_url, hostname=hostname, accel=accel,
    )  # fmt: skip
    try:
        status = run(Agent(cfg).run())
    except (AgentRefused, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3 if isinstance(exc, AgentRefused) else 1) from None
    if status:
        raise typer.Exit(status)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@image_app.command("build")
def image_build(
    name: Annotated[str, typer.Argument(help="the image to build: tiny, debian-12, debian-13")],
    dest: Annotated[Path | None, typer.Option(help="directory (default: the shared image cache)")] = None,
    force: Annotated[bool, typer.Option("--force", help="build again even when the cache holds this recipe's image")] = False,
    register: Annotated[bool, typer.Option("--register/--no-register", help="register it as a shared template on the server (debian-*)")] = True,
    url: UrlOpt = None,
) -> None:
    """Build a guest image from Debian's packages (no internet needed beyond the mirror).

    `debian-12` / `debian-13` build a cloud image (mmdebstrap; a minute or two) cached by its
    recipe, then register it as the shared template of that name (`os: debian`, `loginUser:
    debian`) on the server at --url."""
    from ..config import Settings
    from ..images import ImageBuildError, build_tiny_image, tiny_dir
    from ..images.debian import build_debian_image
    from ..images.debian_recipe import RECIPES

    known = ["tiny", *RECIPES]
    if name not in known:
        typer.echo(f"error: unknown image {name!r}; known: {', '.join(known)}", err=True)
        raise typer.Exit(2)
    cache = Settings(driver="sim").resolved_image_cache()
    tty = sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=Console(stderr=True), disable=not tty) as bar:
        t = bar.add_task(name, total=100)

        def progress(pct: int, message: str) -> None:
            bar.update(t, completed=pct, description=message)
            if not tty:  # a log, a pipe, CI: one line per stage
                typer.echo(f"[{pct:3d}%] {message}", err=True)

        try:
            if name == "tiny":
                image = build_tiny_image(dest or tiny_dir(cache), progress)
            else:
                disk = build_debian_image(name, dest or cache, force=force, progress=progress)
        except ImageBuildError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    if name == "tiny":
        typer.echo(f"kernel {image.kernel}\ninitrd {image.initrd}\ndisk   {image.disk}")
        return
    typer.echo(f"disk   {disk}")
    if register:
        recipe = RECIPES[name]
        _register_template(Client(url), name, disk, recipe.os, recipe.login_user)


def _register_template(c: Client, name: str, disk: Path, os_: str, login_user: str) -> None:
    """Register `disk` as the template `name` (shared when the caller is an operator)."""
    body: dict[str, Any] = {"name": name, "sourceUrl": disk.absolute().as_uri(), "os": os_, "loginUser": login_user}
    resp = c._send("POST", "/api/v1/templates", json=body)
    if resp.status_code == 409 and "already exists" in resp.text:
        typer.echo(f"template {name!r} already exists on {c.url}: delete it first to register this build")
        return
    if resp.status_code >= 400:
        c._fail(resp)
    job = c.wait_job(resp.json()["jobId"], show_progress=sys.stderr.isatty())
    if job["state"] != "succeeded":
        typer.echo(f"error: registering template {name!r} {job['state']}: {job.get('error') or job}", err=True)
        raise typer.Exit(1)
    typer.echo(f"template {name} {resp.json()['templateId']}")


@app.command()
def mcp(url: UrlOpt = None) -> None:
    """Serve vmplane's tools to an AI agent over MCP on stdin/stdout; each tool call goes to
    the server at --url with the key in VMPLANE_API_KEY (or the data dir's owner key)."""
    import asyncio

    from ..api.mcp import serve_stdio

    client = Client(url)
    key = client.http.headers.get("X-API-Key")
    if not key:
        typer.echo("error: no API key: set VMPLANE_API_KEY", err=True)
        raise typer.Exit(2)
    asyncio.run(serve_stdio(client.url, key))


# -- vm -------------------------------------------------------------------------------------


def _print(data: Any) -> None:
    out.print_json(json.dumps(data)) if interactive(False) else typer.echo(json.dumps(data, indent=2))


def _finish(
    client: Client, accepted: dict[str, Any], wait: bool, json_out: bool, ready: list[str] | None = None, names: dict[str, str] | None = None, started: bool = True
) -> None:
    """Print the job, or wait for it to end (and then for the guests of the VMs in `ready`);
    then say what it did in words, VMs by their names (`names`: id -> name)."""
    job_id = accepted["jobId"]
    if not wait:
        _print(accepted) if json_out else typer.echo(job_id)
        return
    job = client.wait_job(job_id, show_progress=interactive(json_out), names=names)
    if ready and job["state"] in ("succeeded", "partial"):
        _wait_ready(client, ready)
    if json_out:
        _print(client.request("GET", f"/api/v1/jobs/{job_id}"))
    else:
        detail = client.request("GET", f"/api/v1/jobs/{job_id}")
        names = names or {}
        if any(t["resourceId"].startswith("vm-") and t["resourceId"] not in names for t in detail["tasks"]):
            names = {**client.task_names(detail), **names}  # made by the job (an import): its name now
        typer.echo(outcome(detail, names, started))
        for t in detail["tasks"] if job["state"] != "succeeded" else ():
            if t.get("error"):
                typer.echo(f"  {names.get(t['resourceId'], t['resourceId'])}: {t['error']}", err=True)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


READY_TIMEOUT = 900.0
"""how long `vm create` and `vm start` wait for guests to be ready (Debian under TCG: ~80 s)"""


def _wait_ready(client: Client, vm_ids: list[str]) -> None:
    """After a create or start: wait until each VM's guest is ready (`GET ?waitReady=`, a
    long-poll), with a spinner on stderr when it is a terminal and plain lines otherwise.
    Exits 1 when a VM stops or fails on the way, 3 when one is not ready in READY_TIMEOUT."""
    started = time.monotonic()
    for vm_id in vm_ids:
        vm = client.request("GET", f"/api/v1/vms/{vm_id}")
        if vm["status"] not in ("starting", "rebooting", "running"):
            continue  # not started (--no-start): nothing will boot
        if vm.get("blank"):
            err.print(f"{vm['name']}: an empty disk (no --template): not waiting for a guest that has nothing to boot", highlight=False)
            continue
        what = f"waiting for the guest of {vm['name']} to be ready"
        if err.is_terminal:
            with err.status(what):
                vm = _poll_ready(client, vm, started)
        else:
            err.print(what, highlight=False)
            vm = _poll_ready(client, vm, started)
        if vm.get("guestReady"):
            err.print(f"{vm['name']}: guest ready ({time.monotonic() - started:.1f} s)", highlight=False)
        elif vm["status"] in ("starting", "rebooting", "running"):
            err.print(f"[red]error:[/red] the guest of {vm['name']} was not ready within {READY_TIMEOUT:g} s")
            raise typer.Exit(3)
        else:
            err.print(f"[red]error:[/red] {vm['name']} is {vm['status']} before its guest was ready{': ' + vm['error'] if vm.get('error') else ''}")
            raise typer.Exit(1)


def _poll_ready(client: Client, vm: dict[str, Any], started: float) -> dict[str, Any]:
    while not vm.get("guestReady") and vm["status"] in ("starting", "rebooting", "running"):
        left = READY_TIMEOUT - (time.monotonic() - started)
        if left <= 0:
            break
        wait = min(60.0, max(1.0, left))
        vm = client.request("GET", f"/api/v1/vms/{vm['id']}", params={"waitReady": f"{wait:g}"}, timeout=wait + 30)
    return vm


@vm_app.command("list")
def vm_list(
    url: UrlOpt = None,
    json_out: JsonOpt = False,
    node: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List VMs (every page)."""
    c = Client(url)
    items = c.listing("/api/v1/vms", {k: v for k, v in {"node": node, "status": status, "tag": tag}.items() if v})
    if json_out:
        return _print(items)
    rows = []
    for v in items:
        r = v["resources"]
        shown = v.get("displayName") or v["name"]  # a face's name for it (FastVM's "my web"), when it differs
        name = Text(v["name"] if shown == v["name"] else f"{v['name']} ({shown})")  # Text: no rich markup from users
        status = f"{v['status']} (restart to apply)" if v.get("pendingRestart") else v["status"]
        rows.append([v["id"], name, status, v["node"] or "-", str(r["cpu"]), str(r["ramMb"]), str(r["diskGb"]), v["uptime"] or "-"])
    print_table(out, ["ID", "NAME", "STATUS", "NODE", "CPU", "RAM MB", "DISK GB", "UPTIME"], rows, drop=("UPTIME", "DISK GB", "NODE"))


@vm_app.command("get")
def vm_get(vm: VmArg, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Show one VM (a restart it waits for is said on stderr, unless --json)."""
    found = Client(url).vm(vm)
    if json_out:
        return _print(found)
    print_fields(out, vm_summary(found))
    if (note := _pending_note(found)) is not None:
        typer.echo(note, err=True)


@vm_app.command("stats")
def vm_stats(
    vm: VmArg,
    history: Annotated[bool, typer.Option("--history", help="the stored samples (one every sampling period) instead of now's figures")] = False,
    since: Annotated[str | None, typer.Option(help="with --history: from this RFC 3339 time (default: the last hour)")] = None,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A running VM's CPU, memory, disk and network now, or with --history its stored samples."""
    c = Client(url)
    vm_id = c.vm(vm)["id"]
    if not history:
        now = c.request("GET", f"/api/v1/vms/{vm_id}/stats")
        if json_out:
            return _print(now)
        return print_fields(out, [(k, "-" if v is None else str(v)) for k, v in now.items()])
    h = c.request("GET", f"/api/v1/vms/{vm_id}/stats/history", params={"since": since} if since else {})
    if json_out:
        return _print(h)
    rows = []
    for s in h["items"]:
        disk, net = ("/".join("-" if s[k] is None else f"{s[k]:g}" for k in pair) for pair in (("diskReadBps", "diskWriteBps"), ("netRxBps", "netTxBps")))
        rows.append([s["at"], f"{s['cpuPercent']:g}", f"{s['memoryMb']}/{s['memoryTotalMb']}", disk, net])
    print_table(out, ["AT", "CPU %", "MEM MB", "DISK R/W B/S", "NET RX/TX B/S"], rows)
    if not h["items"]:
        typer.echo(f"no samples (recorded every {h['intervalSeconds']:g} s while the VM runs)", err=True)


@vm_app.command("create")
def vm_create(
    name: Annotated[list[str], typer.Argument(help="one or more VM names")],
    cpu: Annotated[int, typer.Option(help="vCPUs")] = 1,
    ram_mb: Annotated[int, typer.Option("--ram-mb", parser=units.ram_mb, help=units.RAM_HELP)] = 512,
    disk_gb: Annotated[int, typer.Option("--disk-gb", parser=units.disk_gb, help=units.DISK_HELP)] = 10,
    template: Annotated[str | None, typer.Option(help="template id or name; default tiny-linux when the server has it, else none: an empty disk that boots nothing")] = None,
    node: Annotated[str | None, typer.Option(help="put it on this node")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="a tag (repeatable)")] = None,
    ssh_key: Annotated[
        list[str] | None, typer.Option("--ssh-key", metavar="KEY|@FILE", help="an SSH public key for the login user (the template's loginUser), or @ and the file holding it (repeatable)")
    ] = None,
    user_data: Annotated[
        str | None, typer.Option("--user-data", metavar="TEXT|@FILE", help="cloud-init user-data (#cloud-config or a #! script), or @ and its file")
    ] = None,
    iso: Annotated[str | None, typer.Option("--iso", metavar="NAME|ID", help="an ISO in the CD-ROM (`vmplane iso list`); without --template the disk is blank, to install on")] = None,
    boot_order: Annotated[str | None, typer.Option("--boot-order", metavar="DEVICES", help="boot devices in order: cdrom,disk (default disk,cdrom)")] = None,
    firmware: Annotated[str | None, typer.Option("--firmware", metavar="bios|uefi", help="the firmware: bios (default) or uefi")] = None,
    start: Annotated[bool, typer.Option("--start/--no-start")] = True,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create VMs (one job for all of them), then wait for their guests to be ready (--no-wait: for neither)."""
    keys = [_read_arg(k, "--ssh-key").strip() for k in ssh_key or ()]
    for given, text in zip(ssh_key or (), keys):
        refuse_private_key(text, given)  # never sent: the server would refuse it, but after reading it
    cloud = {"cloudInit": {"userData": _read_arg(user_data, "--user-data")}} if user_data else {}
    specs = [
        {
            "name": n,
            "resources": {"cpu": cpu, "ramMb": ram_mb, "diskGb": disk_gb},
            "templateId": template,
            "nodeId": node,
            "tags": tag or [],
            "start": start,
            **({"sshKeys": keys} if keys else {}),
            **cloud,
            **({"cdrom": {"isoId": iso}} if iso is not None else {}),
            **boot_flags(boot_order, firmware),
        }
        for n in name
    ]
    c = Client(url)
    c.flags = dict(BOOT_FLAGS)
    if template is None and iso is None:  # the web console's default too; a server on the sim driver has none
        tiny = c._send("GET", "/api/v1/templates/tiny-linux")
        if tiny.status_code == 200:
            for spec in specs:
                spec["templateId"] = tiny.json()["id"]
        elif tiny.status_code != 404:
            c._fail(tiny)
    c.items = list(name)
    accepted = c.request("POST", "/api/v1/vms", json=specs)
    _finish(c, accepted, wait, json_out, ready=accepted.get("vmIds") or [], names=dict(zip(accepted.get("vmIds") or [], name)), started=start)


BOOT_FLAGS = {"cdrom.isoId": "--iso", "cdrom": "--iso", "bootOrder": "--boot-order", "firmware": "--firmware"}
"""the options of `vm create` and `vm edit` for the API's boot fields (errors name them)"""


def boot_flags(boot_order: str | None, firmware: str | None) -> dict[str, Any]:
    """`--boot-order cdrom,disk` and `--firmware` as the API's fields (the server checks them)."""
    body: dict[str, Any] = {}
    if boot_order is not None:
        body["bootOrder"] = [d.strip() for d in boot_order.split(",") if d.strip()]
    if firmware is not None:
        body["firmware"] = firmware
    return body


def _read_arg(value: str, option: str) -> str:
    """An option's value as given, or the text of the file after `@`."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).expanduser().read_text()
    except OSError as exc:  # `cannot read ~/k.pub: no such file or directory`, not `[Errno 2] …`
        typer.echo(f"error: {option}: cannot read {value[1:]}: {(exc.strerror or type(exc).__name__).lower()}", err=True)
        raise typer.Exit(2) from None
    except UnicodeDecodeError:
        typer.echo(f"error: {option}: {value[1:]} is not text", err=True)
        raise typer.Exit(2) from None


@vm_app.command("delete")
def vm_delete(
    vms: Annotated[list[str], typer.Argument(help="VM names or ids")],
    force: Annotated[bool, typer.Option("--force", "-f", help="delete running VMs too, without asking")] = False,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete VMs (one job). A running VM is refused unless --force (on a terminal: asked).
    A VM that does not exist fails its own task, printed per VM; the others are deleted."""
    c = Client(url)
    ids, names, running = [], {}, []
    for v in vms:
        found = c.find_vm(v)
        ids.append(found["id"] if found is not None else v)  # unknown: its task fails, saying so
        if found is not None:
            names[found["id"]] = found["name"]
            if found["status"] in ("running", "starting", "rebooting", "stopping", "updating"):  # a guest that runs
                running.append(found)
    if running and not force:
        what = show.and_list([f"{v['name']}" for v in running]) + (" is " if len(running) == 1 else " are ") + show.and_list(sorted({v["status"] for v in running}), 3)
        if sys.stdin.isatty() and sys.stderr.isatty() and not json_out:
            if not typer.confirm(f"{what}; delete {'it' if len(running) == 1 else 'them'}?", default=False, err=True):
                typer.echo("nothing deleted", err=True)
                raise typer.Exit(1)
        else:
            typer.echo(f"error: {what}; stop {'it' if len(running) == 1 else 'them'} first (vmplane vm stop) or give --force: nothing deleted", err=True)
            raise typer.Exit(1)
    _finish(c, c.request("DELETE", "/api/v1/vms", json={"vmIds": ids}), wait, json_out, names=names)


def _power_command(action: str, doc: str) -> None:
    def command(vm: VmArg, wait: WaitOpt = True, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
        c = Client(url)
        v = c.vm(vm)
        vm_id = v["id"]
        _finish(c, c.request("POST", f"/api/v1/vms/{vm_id}/{action}"), wait, json_out, ready=[vm_id] if action == "start" else [], names={vm_id: v["name"]})

    command.__doc__ = doc
    vm_app.command(action)(command)


_power_command("start", "Power a VM on, then wait for its guest to be ready (--no-wait: for neither).")
_power_command("stop", "Power a VM off (hard).")
_power_command("shutdown", "Shut a VM down gracefully.")
_power_command("reboot", "Reboot a VM.")


@vm_app.command("restart")
def vm_restart(
    vm: VmArg,
    soft: Annotated[bool, typer.Option("--soft", help="reboot the guest instead (keeps the VM's process: a pending resize stays pending)")] = False,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Power-cycle a VM, so that it takes its configuration (a CPU/RAM resize pending restart)."""
    c = Client(url)
    v = c.vm(vm)
    _finish(c, c.request("POST", f"/api/v1/vms/{v['id']}/{'reboot' if soft else 'power-cycle'}"), wait, json_out, names={v["id"]: v["name"]})


def _pending_note(v: dict[str, Any]) -> str | None:
    """What a VM waits for a restart to apply (`pendingRestart`), as one line, or None."""
    if not v.get("pendingRestart"):
        return None
    return f"restart to apply: {', '.join(v.get('pending') or ())} (vmplane vm restart {v['name']})"


SSH_READY_WAIT = 120.0
"""how long `vm ssh` waits for a booting guest's host key"""


@vm_app.command("ssh")
def vm_ssh(
    vm: VmArg,
    args: Annotated[list[str] | None, typer.Argument(metavar="[-- SSH_ARGS... [COMMAND...]]", help="more ssh options and/or a command to run")] = None,
    identity: Annotated[str | None, typer.Option("-i", "--identity", help="private key file (as ssh -i)")] = None,
    user: Annotated[str | None, typer.Option("-l", "--user", help="log in as this user (default: the VM's login user, its ssh.user: its template's loginUser)")] = None,
    url: UrlOpt = None,
) -> None:
    """Log in to a VM with the system `ssh` through its forwarded SSH port; exits with ssh's status."""
    import shutil

    from .ssh import run_ssh

    c = Client(url)
    v = c.vm(vm)
    if v["status"] != "running":  # its forwarded port is no guest's now (the server's console answers the same)
        hint = {"stopped": f"; start it with `vmplane vm start {v['name']}`", "error": f"; see `vmplane vm get {v['name']}` for its error"}
        typer.echo(f"error: {v['name']} is {v['status']}{hint.get(v['status'], '; try again once it is running')}", err=True)
        raise typer.Exit(1)
    if v.get("ssh") and not v["ssh"].get("hostKey") and not v.get("guestReady"):
        # the guest prints its own host key as it boots (vmplane pins it): wait for it rather than trust the first answer
        typer.echo(f"waiting for {v['name']}'s guest to be ready (its SSH host key is not known yet)…", err=True)
        v = c.request("GET", f"/api/v1/vms/{v['id']}", params={"waitReady": f"{SSH_READY_WAIT:g}"}, timeout=SSH_READY_WAIT + 30)
        if not v["ssh"].get("hostKey") and not v.get("guestReady"):
            typer.echo(f"error: {v['name']}'s guest is not ready after {SSH_READY_WAIT:g} s, so its host key is not known: try again later", err=True)
            raise typer.Exit(1)
    if not v.get("ssh"):
        addresses = [ip for n in v.get("nics") or () for ip in n["ipAddresses"]]
        where = f"; reach it at its address ({', '.join(addresses)}) if your host can" if addresses else ""
        typer.echo(f"error: VM {v['id']} has no SSH port forwarded (not on a qemu node, or no user-mode NIC){where}", err=True)
        raise typer.Exit(1)
    if shutil.which("ssh") is None:
        typer.echo("error: the `ssh` command is not installed (Debian: apt-get install openssh-client)", err=True)
        raise typer.Exit(2)
    if identity is not None and not Path(identity).is_file():
        typer.echo(f"error: -i: no such file: {identity}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run_ssh(v["ssh"], v["id"], identity, user, list(args or [])))


@vm_app.command("console")
def vm_console(
    vm: VmArg,
    linger: Annotated[float, typer.Option(help="when stdin is not a terminal: seconds of quiet after its end before leaving")] = 1.0,
    url: UrlOpt = None,
) -> None:
    """Attach the terminal to a VM's serial console (raw mode; Ctrl-] detaches)."""
    from websockets.exceptions import WebSocketException

    from .console import attach

    c = Client(url)
    v = c.vm(vm)
    tok = c.request("POST", f"/api/v1/vms/{v['id']}/console")
    ws_url = ("ws" + c.url[4:] if c.url.startswith("http") else c.url) + tok["websocketPath"]
    try:
        code = attach(ws_url, {}, v["name"], linger)
    except (OSError, WebSocketException) as exc:  # ConnectionError is an OSError
        typer.echo(f"error: console of {v['name']}: {unreachable(c.url, exc) if isinstance(exc, OSError) else exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@vm_app.command("display")
def vm_display(vm: VmArg, url: UrlOpt = None) -> None:
    """Print the address of the VM's graphical console in the web console (open it in a
    browser: the Display section of the VM's page, noVNC)."""
    c = Client(url)
    v = c.vm(vm)
    typer.echo(f"{c.url}/ui/#/vms/{v['id']}/display")
    if v.get("status") != "running":
        typer.echo(f"note: {v['name']} is {v.get('status')}: its display shows once it runs", err=True)


@vm_app.command("exec")
def vm_exec(
    vm: VmArg,
    command: Annotated[list[str], typer.Argument(metavar="-- COMMAND...", help="the program and its arguments (no shell)")],
    timeout: Annotated[float, typer.Option(help="seconds before the command is killed (at most 600)")] = 60.0,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a command in a VM through its guest agent: prints its output, exits with its code
    (124 when it timed out)."""
    c = Client(url)
    v = c.vm(vm)
    r = c.request("POST", f"/api/v1/vms/{v['id']}/exec", json={"command": command, "timeoutSec": timeout}, timeout=timeout + 30)
    if json_out:
        _print(r)
    else:
        sys.stdout.write(r["stdout"])
        sys.stdout.flush()
        sys.stderr.write(r["stderr"])
        for stream in ("stdout", "stderr"):
            if r.get(f"{stream}Truncated"):
                typer.echo(f"vmplane: the command's {stream} was cut short", err=True)
    if r["timedOut"]:
        typer.echo(f"vmplane: the command timed out after {timeout:g}s", err=True)
        raise typer.Exit(124)
    raise typer.Exit(r["exitCode"] if r["exitCode"] is not None else 1)


@app.command("events")
def events(
    types: Annotated[str | None, typer.Option("--types", help="comma-separated types or patterns: vm.*,job.completed")] = None,
    resource: Annotated[str | None, typer.Option("--resource", help="only events about this resource id")] = None,
    vm: Annotated[str | None, typer.Option("--vm", metavar="NAME_OR_ID", help="only events about this VM")] = None,
    since: Annotated[int | None, typer.Option("--since", help="replay the events after this event id first")] = None,
    count: Annotated[int | None, typer.Option("--count", help="leave after this many events")] = None,
    url: UrlOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Follow the event stream (resumes by itself after a dropped connection)."""
    c = Client(url)
    if vm is not None:
        if resource is not None:
            typer.echo("error: give --vm or --resource, not both", err=True)
            raise typer.Exit(2)
        resource = c.vm(vm)["id"]
    params = {k: v for k, v in {"types": types, "resource": resource}.items() if v}
    seen = 0
    try:
        for e in c.follow_events(params, str(since) if since is not None else None):
            if json_out:
                typer.echo(json.dumps(e, separators=(",", ":")))
            else:
                data = e.get("data") or {}
                detail = " ".join(f"{k}={v}" for k, v in data.items() if isinstance(v, (str, int, float, bool)) and k != "id")
                typer.echo(f"{e['time']}  {e['id']:>6}  {e['type']:<20} {e.get('resource') or '-'}  {detail}")
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -- job ------------------------------------------------------------------------------------


@job_app.command("list")
def job_list(
    url: UrlOpt = None,
    json_out: JsonOpt = False,
    state: Annotated[str | None, typer.Option()] = None,
    type_: Annotated[str | None, typer.Option("--type")] = None,
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """List recent jobs, newest first."""
    params = {k: v for k, v in {"state": state, "type": type_, "limit": limit}.items() if v}
    items = Client(url).request("GET", "/api/v1/jobs", params=params)["items"]
    if json_out:
        return _print(items)
    rows = [[j["id"], j["type"], j["state"], f"{j['progress']}%", str(j["taskCount"]), j["createdAt"]] for j in items]
    print_table(out, ["ID", "TYPE", "STATE", "PROGRESS", "TASKS", "CREATED"], rows, drop=("TASKS", "CREATED", "PROGRESS"))


@job_app.command("get")
def job_get(job_id: str, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Show a job with its tasks (their VMs by name)."""
    c = Client(url)
    job = c.request("GET", f"/api/v1/jobs/{job_id}")
    if json_out:
        return _print(job)
    print_fields(out, job_summary(job, c.task_names(job)))


@job_app.command("wait")
def job_wait(
    job_id: str,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
    timeout: Annotated[float | None, typer.Option(help="seconds")] = None,
) -> None:
    """Wait for a job to end; exit 1 unless it succeeded."""
    c = Client(url)
    names = c.task_names(c.request("GET", f"/api/v1/jobs/{job_id}")) if interactive(json_out) else None  # for its progress line
    job = c.wait_job(job_id, show_progress=interactive(json_out), timeout=timeout, names=names)
    if json_out:
        _print(c.request("GET", f"/api/v1/jobs/{job_id}"))
    else:
        detail = c.request("GET", f"/api/v1/jobs/{job_id}")
        typer.echo(f"job {job_id} {job['state']}: {outcome(detail, c.task_names(detail))}")
    if job["state"] != "succeeded":
        raise typer.Exit(1)


# -- node -----------------------------------------------------------------------------------


@node_app.command("list")
def node_list(url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """List nodes with their capacity."""
    items = Client(url).request("GET", "/api/v1/nodes", params={"limit": 500})["items"]
    if json_out:
        return _print(items)
    rows = []
    for n in items:
        r = n["resources"]
        driver = n["driver"] if n["driver"] == n.get("hypervisor", n["driver"]) else f"{n['driver']}/{n['hypervisor']}"
        rows.append([
            n["id"], n["hostname"], n["status"] + (", cordoned" if n.get("cordoned") else ""), driver + (" (simulated)" if n["simulated"] else ""),
            f"{r['cpuUsed']}/{r['cpuTotal']}", f"{r['ramMbUsed']}/{r['ramMbTotal']}", f"{r['diskGbUsed']}/{r['diskGbTotal']}",
        ])  # fmt: skip
    print_table(out, ["ID", "HOSTNAME", "STATUS", "DRIVER", "CPU", "RAM MB", "DISK GB"], rows, drop=("DISK GB", "DRIVER", "HOSTNAME"))


@node_app.command("cordon")
def node_cordon(node_id: str, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Place no new VMs on a node (its VMs stay)."""
    n = Client(url).request("POST", f"/api/v1/nodes/{node_id}/cordon")
    _print(n) if json_out else typer.echo(f"node {n['id']} cordoned")


@node_app.command("uncordon")
def node_uncordon(node_id: str, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Place VMs on a node again."""
    n = Client(url).request("POST", f"/api/v1/nodes/{node_id}/uncordon")
    _print(n) if json_out else typer.echo(f"node {n['id']} uncordoned")


@node_app.command("drain")
def node_drain(node_id: str, wait: WaitOpt = True, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Cordon a node and move its stopped VMs to other nodes."""
    c = Client(url)
    accepted = c.request("POST", f"/api/v1/nodes/{node_id}/drain")
    if accepted["jobId"] is None:
        _print(accepted) if json_out else typer.echo(f"node {node_id} cordoned; no stopped VM to move")
        return
    _finish(c, accepted, wait, json_out)


@node_app.command("revoke-credential")
def node_revoke_credential(node_id: str, url: UrlOpt = None) -> None:
    """Revoke a node agent's credential: the node goes offline at once (it joins again with a new token)."""
    Client(url).request("DELETE", f"/api/v1/nodes/{node_id}/credential")
    typer.echo(f"credential of node {node_id} revoked")


@token_app.command("create")
def token_create(
    url: UrlOpt = None,
    one_time: Annotated[bool, typer.Option("--one-time", help="the token joins one node only")] = False,
    expires: Annotated[float | None, typer.Option("--expires", help="seconds until the token expires")] = None,
    description: Annotated[str, typer.Option(help="what the token is for")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a join token for `vmplane agent --join-token` (printed once, as the last word)."""
    body: dict[str, Any] = {"description": description, "oneTime": one_time, "expiresInSeconds": expires}
    t = Client(url).request("POST", "/api/v1/nodes/tokens", json=body)
    if json_out:
        return _print(t)
    limits = ", ".join(x for x in ("one use" if t["oneTime"] else "", f"expires {t['expiresAt']}" if t["expiresAt"] else "") if x)
    typer.echo(f"join token {t['id']}{f' ({limits})' if limits else ''}; keep it secret, it is shown once: {t['token']}")


@token_app.command("list")
def token_list(url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """List join tokens (never the tokens themselves)."""
    items = Client(url).request("GET", "/api/v1/nodes/tokens")["items"]
    if json_out:
        return _print(items)
    rows = [[t["id"], t["prefix"], str(t["uses"]), "yes" if t["oneTime"] else "no", t["expiresAt"] or "-", t["revokedAt"] or "-", Text(t["description"])] for t in items]
    print_table(out, ["ID", "PREFIX", "USES", "ONE TIME", "EXPIRES", "REVOKED", "DESCRIPTION"], rows, drop=("REVOKED", "EXPIRES", "ONE TIME", "DESCRIPTION"))


@token_app.command("revoke")
def token_revoke(token_id: str, url: UrlOpt = None) -> None:
    """Revoke a join token (nodes that joined with it stay)."""
    Client(url).request("DELETE", f"/api/v1/nodes/tokens/{token_id}")
    typer.echo(f"join token {token_id} revoked")


@vm_app.command("migrate")
def vm_migrate(
    vm: VmArg,
    to: Annotated[str | None, typer.Option("--to", help="the target node (default: placement chooses)")] = None,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Live-migrate a running VM to another node (qemu nodes)."""
    c = Client(url)
    v = c.vm(vm)
    _finish(c, c.request("POST", f"/api/v1/vms/{v['id']}/migrate", json={"targetNodeId": to}), wait, json_out, names={v["id"]: v["name"]})


@vm_app.command("move")
def vm_move(
    vm: VmArg,
    to: Annotated[str | None, typer.Option("--to", help="the target node (default: placement chooses)")] = None,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move a stopped VM to another node (its disk is copied)."""
    c = Client(url)
    v = c.vm(vm)
    _finish(c, c.request("POST", f"/api/v1/vms/{v['id']}/move", json={"targetNodeId": to}), wait, json_out, names={v["id"]: v["name"]})



@vm_app.command("import")
def vm_import(
    source: Annotated[str, typer.Argument(metavar="PATH_OR_URL", help="an OVA (.ova/.ovf) or a disk image: a path on the server's host (under VMPLANE_IMPORT_DIRS) or an http(s)/file URL")],
    name: Annotated[str | None, typer.Option("--name", help="the VM's name (default: the source's)")] = None,
    kind: Annotated[str | None, typer.Option("--type", help="ova or disk (default: ova for .ova/.ovf, else disk)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="disk: qcow2, raw, vmdk or vhdx (default: detected)")] = None,
    network: Annotated[list[str] | None, typer.Option("--map", help="SOURCE_NETWORK=VMPLANE_NETWORK (repeatable)")] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="start the VM once imported")] = True,
    login_user: Annotated[str | None, typer.Option("--login-user", help="the user `vm ssh` logs in as (default: root)")] = None,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import a VM from an OVA or a disk image (vSphere and vmplane sources: POST /api/v1/imports)."""
    kind = kind or ("ova" if source.lower().split("?")[0].endswith((".ova", ".ovf")) else "disk")
    src: dict[str, Any] = {"type": kind}
    src["url" if "://" in source else "path"] = source if "://" in source else str(Path(source).absolute())
    if fmt:
        src["format"] = fmt
    mapping = {}
    for item in network or []:
        left, sep, right = item.partition("=")
        if not sep or not left or not right:
            raise typer.BadParameter(f"{item!r} is not SOURCE_NETWORK=VMPLANE_NETWORK", param_hint="--map")
        mapping[left] = right
    body = {"source": src, "networkMapping": mapping, "start": start, **({"name": name} if name else {}), **({"loginUser": login_user} if login_user else {})}
    c = Client(url)
    accepted = c.request("POST", "/api/v1/imports", json=body)
    _finish(c, accepted, wait, json_out)
    if wait and not json_out:
        imp = c.request("GET", f"/api/v1/imports/{accepted['importId']}")
        typer.echo(f"import {imp['id']} {imp['state']}: VM {imp['vmId']} ({imp['name']})")


if __name__ == "__main__":
    main()
