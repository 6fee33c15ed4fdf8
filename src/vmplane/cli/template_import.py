"""`vmplane template import`: a template from a local image file (streamed to
POST /api/v1/templates/upload, with a progress bar of the bytes sent) or from a URL the server
fetches (POST /api/v1/templates), then the import job followed to its end. One function,
registered on the `template` group in commands.py."""

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from .client import Client, err

CHUNK = 1 << 20


def _chunks(path: Path, size: int, show: bool) -> Iterator[bytes]:
    """The file in 1 MiB chunks, never whole in memory; with `show`, a bar of the bytes read."""
    with path.open("rb") as f, Progress(TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, disable=not show) as bar:
        t = bar.add_task("upload", total=size)
        while chunk := f.read(CHUNK):
            bar.advance(t, len(chunk))
            yield chunk


def template_import(
    name: Annotated[str, typer.Argument(help="the new template's name")],
    file: Annotated[Path | None, typer.Option("--file", help="a local image file to upload (qcow2, raw, vmdk, vhdx, vhd)")] = None,
    source_url: Annotated[str | None, typer.Option("--source-url", help="an http(s) URL the server fetches the image from")] = None,
    os_: Annotated[str, typer.Option("--os", help="the OS label (debian, ubuntu, fedora, linux, ...)")] = "linux",
    login_user: Annotated[str | None, typer.Option("--login-user", help="the user VMs made from it log in as (default: from --os)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the import job to end")] = True,
    url: Annotated[str | None, typer.Option("--url", help="server URL (env VMPLANE_URL)", envvar="VMPLANE_URL")] = None,
) -> None:
    """Make a template from a local image file (--file) or from a URL (--source-url)."""
    if (file is None) == (source_url is None):
        err.print("[red]error:[/red] give one of --file or --source-url")
        raise typer.Exit(2)
    c = Client(url)
    if file is not None:
        if not file.is_file():
            err.print(f"[red]error:[/red] --file {str(file)!r} is not a readable file")
            raise typer.Exit(2)
        size = file.stat().st_size
        params: dict[str, Any] = {"name": name, "os": os_}
        if login_user is not None:
            params["loginUser"] = login_user
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        r = c.request("POST", "/api/v1/templates/upload", params=params, headers=headers, content=_chunks(file, size, err.is_terminal),
                      timeout=None)  # fmt: skip
    else:
        body: dict[str, Any] = {"name": name, "os": os_, "sourceUrl": source_url}
        if login_user is not None:
            body["loginUser"] = login_user
        r = c.request("POST", "/api/v1/templates", json=body)
    if not wait:
        typer.echo(f"template {name} {r['templateId']} importing (job {r['jobId']})")
        return
    job = c.wait_job(r["jobId"], err.is_terminal)
    if job["state"] != "succeeded":
        reason = next((t["error"] for t in job.get("tasks", []) if t.get("error")), job["state"])
        err.print(f"[red]error:[/red] the import of {name} {job['state']}: {reason}")
        raise typer.Exit(1)
    typer.echo(f"template {name} {r['templateId']} ready")
