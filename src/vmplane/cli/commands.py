"""`template list`, `template import` (from template_import.py) and `vm resize|rename|edit`: commands registered on main.py's apps from here
(main.py's `main()` imports this module before it runs the command)."""

from typing import Annotated, Any

import typer

from .client import Client, err
from .iso import iso_app
from .main import BOOT_FLAGS, JsonOpt, UrlOpt, VmArg, WaitOpt, _print, app, boot_flags, out, vm_app
from .show import and_list, print_table
from .template_import import template_import
from .units import DISK_HELP, RAM_HELP, disk_gb, ram_mb, show_mib

__all__ = ["app"]

template_app = typer.Typer(no_args_is_help=True, help="Guest templates (images VMs are made from): list, import.")
app.add_typer(template_app, name="template")
template_app.command("import")(template_import)
app.add_typer(iso_app, name="iso")


@template_app.command("list")
def template_list(url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """List the templates you can make VMs from (yours and the shared ones)."""
    c = Client(url)
    items = c.listing("/api/v1/templates")
    if json_out:
        return _print(items)
    rows = [
        [t["name"] + (" (shared)" if t.get("shared") else ""), t["os"], t["loginUser"], show_mib(t["sizeMb"]) if t["sizeMb"] else "-", t["status"], t["id"]]
        for t in items
    ]
    print_table(out, ["NAME", "OS", "LOGIN USER", "SIZE", "STATUS", "ID"], rows, drop=("STATUS", "SIZE", "OS", "LOGIN USER"))


def _patch(c: Client, v: dict[str, Any], body: dict[str, Any], wait: bool, json_out: bool) -> None:
    """PATCH the VM, wait for its job, then say what changed and what waits for a restart."""
    accepted = c.request("PATCH", f"/api/v1/vms/{v['id']}", json=body)
    if not wait:
        _print(accepted) if json_out else typer.echo(accepted["jobId"])
        return
    job = c.wait_job(accepted["jobId"], show_progress=not json_out and err.is_terminal, names={v["id"]: v["name"]})
    if job["state"] != "succeeded":
        detail = c.request("GET", f"/api/v1/jobs/{accepted['jobId']}")
        errors = [t["error"] for t in detail["tasks"] if t.get("error")]
        typer.echo(f"error: {v['name']} was not changed: {'; '.join(errors) or job['state']}", err=True)
        raise typer.Exit(1)
    after = c.request("GET", f"/api/v1/vms/{v['id']}")
    if json_out:
        return _print(after)
    typer.echo(changes(v, after))


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`web: 2 vCPUs after restart; `vmplane vm restart web``: what a change did, in words."""
    name = after["name"]
    now: list[str] = []
    if after["name"] != before["name"]:
        now.append(f"renamed from {before['name']}")
    shown = after.get("displayName") or after["name"]
    if shown != after["name"] and shown != (before.get("displayName") or before["name"]):  # a rename alone moves a display name that was the name
        now.append(f"shown as {shown!r}")
    if after.get("tags") != before.get("tags"):
        now.append(f"tags {', '.join(after['tags']) or 'none'}")
    if after.get("cdrom") != before.get("cdrom"):
        now.append(f"CD-ROM holds {after['cdrom']['isoId']}" if after.get("cdrom") else "CD-ROM ejected")
    boot_later = [
        f"{label} {value}" for key, label, value in (
            ("bootOrder", "boots", ", ".join(after.get("bootOrder") or ())), ("firmware", "firmware", after.get("firmware")),
        ) if after.get(key) != before.get(key)
    ]  # fmt: skip
    r0, r1 = before["resources"], after["resources"]
    words = {"cpu": f"{r1['cpu']} vCPU{'s' if r1['cpu'] != 1 else ''}", "ramMb": f"{show_mib(r1['ramMb'])} RAM", "diskGb": f"{r1['diskGb']} GiB disk"}
    pending = set(after.get("pending") or ())
    later = [words[k] for k in ("cpu", "ramMb", "diskGb") if k in pending]
    now += [words[k] for k in ("cpu", "ramMb", "diskGb") if r0[k] != r1[k] and k not in pending]
    parts = []
    if now:
        parts.append(and_list(now) + (" now" if any(r0[k] != r1[k] and k not in pending for k in r0) else ""))
    if later:
        parts.append(f"{and_list(later)} after restart; `vmplane vm restart {name}`")
    if boot_later:
        parts.append(f"{and_list(boot_later)} from its next start")
    return f"{name}: {'; '.join(parts) if parts else 'nothing changed'}"


CpuOpt = Annotated[int | None, typer.Option("--cpu", metavar="N", help="vCPUs")]
RamOpt = Annotated[int | None, typer.Option("--ram-mb", metavar="SIZE", parser=ram_mb, help=RAM_HELP)]
DiskOpt = Annotated[int | None, typer.Option("--disk-gb", metavar="SIZE", parser=disk_gb, help=DISK_HELP + " (disks only grow)")]


@vm_app.command("resize")
def vm_resize(vm: VmArg, cpu: CpuOpt = None, ram: RamOpt = None, disk: DiskOpt = None, wait: WaitOpt = True, url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """Change a VM's vCPUs, RAM or disk; says what waits for a restart (`vmplane vm restart`)."""
    resources = {k: val for k, val in {"cpu": cpu, "ramMb": ram, "diskGb": disk}.items() if val is not None}
    if not resources:
        raise typer.BadParameter("give --cpu, --ram-mb or --disk-gb", param_hint="resize")
    c = Client(url)
    _patch(c, c.vm(vm), {"resources": resources}, wait, json_out)


@vm_app.command("rename")
def vm_rename(
    vm: VmArg,
    new_name: Annotated[str, typer.Argument(metavar="NEW_NAME", help="1-63 letters, digits and '-'")],
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Give a VM a new name (its id stays)."""
    c = Client(url)
    c.flags = {"name": "NEW_NAME"}
    _patch(c, c.vm(vm), {"name": new_name}, wait, json_out)


@vm_app.command("edit")
def vm_edit(
    vm: VmArg,
    name: Annotated[str | None, typer.Option("--name", metavar="NEW_NAME", help="a new name")] = None,
    display_name: Annotated[str | None, typer.Option("--display-name", metavar="TEXT", help="the name faces show (free text)")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="TAG", help="the VM's tags, replacing its own (repeatable)")] = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="remove every tag")] = False,
    cpu: CpuOpt = None,
    ram: RamOpt = None,
    disk: DiskOpt = None,
    iso: Annotated[str | None, typer.Option("--iso", metavar="NAME|ID", help="insert this ISO into the CD-ROM (at once on a running VM)")] = None,
    eject: Annotated[bool, typer.Option("--eject", help="empty the CD-ROM")] = False,
    boot_order: Annotated[str | None, typer.Option("--boot-order", metavar="DEVICES", help="boot devices in order, e.g. cdrom,disk (from the next start)")] = None,
    firmware: Annotated[str | None, typer.Option("--firmware", metavar="bios|uefi", help="the firmware (the VM must be stopped)")] = None,
    wait: WaitOpt = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change a VM's name, display name, tags, resources, CD-ROM, boot order and firmware in one go (one PATCH of the VM)."""
    body: dict[str, Any] = {k: val for k, val in {"name": name, "displayName": display_name}.items() if val is not None}
    if tag and no_tags:
        raise typer.BadParameter("give --tag or --no-tags, not both", param_hint="--no-tags")
    if tag or no_tags:
        body["tags"] = list(tag or [])
    resources = {k: val for k, val in {"cpu": cpu, "ramMb": ram, "diskGb": disk}.items() if val is not None}
    if resources:
        body["resources"] = resources
    if iso is not None and eject:
        raise typer.BadParameter("give --iso or --eject, not both", param_hint="--eject")
    if iso is not None or eject:
        body["cdrom"] = {"isoId": iso} if iso is not None else None
    body.update(boot_flags(boot_order, firmware))
    if not body:
        raise typer.BadParameter(
            "nothing to change: give --name, --display-name, --tag, --no-tags, --cpu, --ram-mb, --disk-gb, --iso, --eject, --boot-order or --firmware",
            param_hint="edit",
        )
    c = Client(url)
    c.flags = {"name": "--name", **BOOT_FLAGS}
    _patch(c, c.vm(vm), body, wait, json_out)
