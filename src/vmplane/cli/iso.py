"""`vmplane iso list|import|delete`: the ISO library. An import streams a local file to
POST /api/v1/isos/upload with a progress bar of the bytes sent (as `template import` does), or
has the server fetch a URL (POST /api/v1/isos, a job followed to its end). Registered on the
`iso` group in commands.py."""

import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer

from .client import Client, err
from .main import JsonOpt, UrlOpt, _print, out
from .show import print_table
from .template_import import CHUNK, _chunks

iso_app = typer.Typer(no_args_is_help=True, help="ISO images VMs boot from their CD-ROM (installers, live systems): list, import, delete.")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n else "-"


@iso_app.command("list")
def iso_list(url: UrlOpt = None, json_out: JsonOpt = False) -> None:
    """List the ISOs you can put in a VM's CD-ROM (yours and the shared ones)."""
    items = Client(url).listing("/api/v1/isos")
    if json_out:
        return _print(items)
    rows = [[i["name"] + (" (shared)" if i["shared"] else ""), _size(i["sizeBytes"]), i["status"], i["id"]] for i in items]
    print_table(out, ["NAME", "SIZE", "STATUS", "ID"], rows, drop=("STATUS", "SIZE"))


def _sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


@iso_app.command("import")
def iso_import(
    name: Annotated[str, typer.Argument(help="the new ISO's name")],
    file: Annotated[Path | None, typer.Option("--file", help="a local ISO file to upload")] = None,
    source_url: Annotated[str | None, typer.Option("--source-url", help="an http(s) URL the server fetches the ISO from")] = None,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", help="the SHA-256 the ISO must have (checked before it is offered; with --file, checked here too)"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for a --source-url import to end")] = True,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add an ISO from a local file (--file, streamed) or from a URL (--source-url)."""
    if (file is None) == (source_url is None):
        err.print("[red]error:[/red] give one of --file or --source-url")
        raise typer.Exit(2)
    c = Client(url)
    c.flags = {"sourceUrl": "--source-url", "sha256": "--sha256", "name": "NAME", "body": "--file"}
    if file is not None:
        if not file.is_file():
            err.print(f"[red]error:[/red] --file {str(file)!r} is not a readable file")
            raise typer.Exit(2)
        if sha256 is not None and _sha256_of(file) != sha256.lower():
            err.print(f"[red]error:[/red] --sha256: {file} does not have this SHA-256")
            raise typer.Exit(2)
        size = file.stat().st_size
        params: dict[str, Any] = {"name": name, **({"sha256": sha256} if sha256 else {})}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        iso = c.request(
            "POST", "/api/v1/isos/upload", params=params, headers=headers, content=_chunks(file, size, err.is_terminal), timeout=None
        )
    else:
        body: dict[str, Any] = {"name": name, "sourceUrl": source_url, **({"sha256": sha256} if sha256 else {})}
        r = c.request("POST", "/api/v1/isos", json=body)
        if not wait:
            return _print(r) if json_out else typer.echo(f"iso {name} {r['isoId']} importing (job {r['jobId']})")
        job = c.wait_job(r["jobId"], not json_out and err.is_terminal)
        if job["state"] != "succeeded":
            reason = next((t["error"] for t in job.get("tasks", []) if t.get("error")), job["state"])
            err.print(f"[red]error:[/red] the import of {name} {job['state']}: {reason}")
            raise typer.Exit(1)
        iso = c.request("GET", f"/api/v1/isos/{r['isoId']}")
    if json_out:
        return _print(iso)
    typer.echo(f"iso {iso['name']} {iso['id']} ready ({_size(iso['sizeBytes'])}, sha256 {iso['sha256']})")


@iso_app.command("delete")
def iso_delete(ref: Annotated[str, typer.Argument(metavar="NAME|ID", help="the ISO")], url: UrlOpt = None) -> None:
    """Delete an ISO (refused while a VM's CD-ROM holds it: `vmplane vm edit VM --eject` first)."""
    c = Client(url)
    iso = c.request("GET", f"/api/v1/isos/{ref}")
    c.request("DELETE", f"/api/v1/isos/{iso['id']}")
    typer.echo(f"iso {iso['name']} deleted")
