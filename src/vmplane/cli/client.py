"""The one HTTP client helper of the CLI: base URL, errors as messages, job waiting."""

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..http_clients import api_client
from ..ids import looks_like_id, looks_like_uuid

err = Console(stderr=True)
FINAL = {"succeeded", "failed", "partial", "cancelled"}


class Client:
    def __init__(self, url: str | None) -> None:
        self.url = (url or os.environ.get("VMPLANE_URL") or "http://127.0.0.1:8080").rstrip("/")
        key, self.key_source = find_key()
        self.http = api_client(self.url, key, timeout=30)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        if resp.status_code >= 400:
            self._fail(resp)
        return resp.json() if resp.content else None

    def vm(self, ref: str) -> dict[str, Any]:
        """The VM whose id (or uuid) or name is `ref`; exits 1 with a message when none is, or when the
        id of one VM is the name of another."""
        vm = self.find_vm(ref)
        if vm is None:
            err.print(f"[red]error:[/red] VM {ref!r} does not exist (no VM has that id or name)")
            raise typer.Exit(1)
        return vm

    def find_vm(self, ref: str) -> dict[str, Any] | None:
        """As `vm`, but None when no VM has that id or name."""
        found: dict[str, dict[str, Any]] = {}
        if (looks_like_id(ref) and ref.startswith("vm-")) or looks_like_uuid(ref):
            resp = self._send("GET", f"/api/v1/vms/{ref}")
            if resp.status_code == 200:
                found[resp.json()["id"]] = resp.json()
            elif resp.status_code != 404:
                self._fail(resp)
        if 0 < len(ref) <= 63:  # the longest name there is
            for v in self.request("GET", "/api/v1/vms", params={"name": ref, "limit": 2})["items"]:
                found[v["id"]] = v
        if not found:
            return None
        if len(found) > 1:
            err.print(f"[red]error:[/red] {ref!r} names more than one VM ({', '.join(sorted(found))}): give its id")
            raise typer.Exit(1)
        return next(iter(found.values()))

    def follow_events(
        self, params: dict[str, str], last_id: str | None = None, retry: float = 2.0
    ) -> Iterator[dict[str, Any]]:
        """The event stream (SSE), for ever. When the server goes away (it shut down, or the
        connection dropped) this says so once, "the server went away; reconnecting", and
        connects again every `retry` seconds (the server's `retry:`) until it is back, resuming
        after the last event seen (`Last-Event-ID`): nothing is missed or repeated. A first
        connection that fails is an error, as for every command."""
        connected = False  # ever: until then, a failure is the caller's (wrong URL, no server)
        away = False  # said "the server went away", not back yet
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            dropped: str | None = None  # the server dropped this subscriber (too slow), it did not go away
            try:
                with self.http.stream("GET", "/api/v1/events", params=params, headers=headers, timeout=httpx.Timeout(30, read=None)) as resp:
                    if connected and resp.status_code in (502, 503, 504):  # a proxy in front, or a server still starting
                        resp.read()
                        raise httpx.RemoteProtocolError(f"HTTP {resp.status_code}", request=resp.request)
                    if resp.status_code >= 400:
                        resp.read()
                        self._fail(resp)
                    if away:
                        err.print("[green]reconnected[/green]" + (f"; resuming after event {last_id}" if last_id else ""))
                    connected, away = True, False
                    data: list[str] = []
                    for line in resp.iter_lines():
                        if line.startswith("retry:") and line[6:].strip().isdigit():
                            retry = int(line[6:].strip()) / 1000
                        elif line.startswith("id:"):
                            last_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line == "" and data:
                            event = json.loads("\n".join(data))
                            data = []
                            if "type" in event:
                                yield event
                            elif not event.get("goingAway"):  # `event: error`: dropped as too slow
                                dropped = str(event.get("reason", event))
            except httpx.HTTPError as exc:
                if not connected:
                    err.print(f"[red]error:[/red] cannot reach vmplane at {self.url}: {exc}")
                    raise typer.Exit(2) from exc
            if dropped is not None:
                err.print(f"[yellow]event stream interrupted:[/yellow] {dropped}; resuming")
            elif not away:  # the stream ended: the server shut down, or the connection dropped
                err.print("[yellow]the server went away; reconnecting[/yellow]" + (f" (to resume after event {last_id})" if last_id else ""))
                away = True
            time.sleep(retry)

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]error:[/red] cannot reach vmplane at {self.url}: {exc}")
            raise typer.Exit(2) from exc

    def _fail(self, resp: httpx.Response) -> None:
        try:
            body = resp.json()
            message = body.get("error") or body
        except ValueError:
            message = resp.text
        err.print(f"[red]error ({resp.status_code}):[/red] {message}")
        if resp.status_code == 401:
            err.print(self.key_source, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)

    def wait_job(self, job_id: str, show_progress: bool, timeout: float | None = None) -> dict[str, Any]:
        """Poll a job until it ends; with `show_progress`, draw a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll: Callable[[], dict[str, Any]] = lambda: self.request("GET", f"/api/v1/jobs/{job_id}")  # noqa: E731
        job = poll()
        if show_progress:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=err) as bar:
                t = bar.add_task(f"{job['type']} {job_id}", total=100)
                while job["state"] not in FINAL:
                    bar.update(t, completed=job["progress"], description=f"{job['type']} {job_id} [{job['state']}]")
                    _sleep_or_timeout(deadline)
                    job = poll()
                bar.update(t, completed=100, description=f"{job['type']} {job_id} [{job['state']}]")
        else:
            while job["state"] not in FINAL:
                _sleep_or_timeout(deadline)
                job = poll()
        return job


def find_key() -> tuple[str | None, str]:
    """The API key the CLI sends, and where it came from or where it was looked for, in
    words for a 401: VMPLANE_API_KEY, else the owner key `vmplane serve` wrote to its data
    dir (VMPLANE_DATA_DIR, default ./.vmplane as `make run` uses)."""
    hint = (
        "point the CLI at a key: VMPLANE_DATA_DIR=<the --data-dir of `vmplane serve`, `make run DATA_DIR=`> "
        "(the owner key is its admin-api-key), or VMPLANE_API_KEY=<a key>"
    )
    if key := os.environ.get("VMPLANE_API_KEY"):
        return key, "the key sent was VMPLANE_API_KEY's, and the server does not take it"
    path = Path(os.environ.get("VMPLANE_DATA_DIR") or ".vmplane") / "admin-api-key"
    where = path.absolute()
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        return None, f"no API key sent: VMPLANE_API_KEY is not set and {where} does not exist; {hint}"
    except OSError as exc:
        return None, f"no API key sent: VMPLANE_API_KEY is not set and {where} cannot be read ({exc.strerror or exc}); {hint}"
    return key, f"the key sent was the one in {where}, and the server does not take it; {hint}"


def _sleep_or_timeout(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        err.print("[red]error:[/red] timed out waiting for the job")
        raise typer.Exit(3)
    time.sleep(0.3)


def interactive(json_out: bool) -> bool:
    return not json_out and sys.stdout.isatty()
