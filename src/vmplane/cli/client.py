"""The one HTTP client helper of the CLI: base URL, errors as messages, job waiting."""

import difflib
import errno
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from ..http_clients import api_client
from ..ids import looks_like_id, looks_like_uuid
from .show import job_doing, job_tally

err = Console(stderr=True, soft_wrap=True)  # an error line is never broken by rich: a path or URL in it stays whole to copy (the terminal wraps it)
FINAL = {"succeeded", "failed", "partial", "cancelled"}

FLAGS = {
    "resources.ramMb": "--ram-mb", "resources.diskGb": "--disk-gb", "resources.cpu": "--cpu", "templateId": "--template",
    "nodeId": "--node", "tags": "--tag", "sshKeys": "--ssh-key", "cloudInit.userData": "--user-data", "name": "NAME",
    "targetNodeId": "--to", "timeoutSec": "--timeout", "displayName": "--display-name", "loginUser": "--login-user",
    "expiresInSeconds": "--expires", "description": "--description",
}  # fmt: skip
"""the API's field paths (a bulk item's `[i].` and list indexes taken off) -> the CLI's words for them"""

UNITS = {"--ram-mb": " MiB", "--disk-gb": " GiB"}
_BOUND = re.compile(r"^Input should be (greater|less) than or equal to (\d+)$")
_FIELD = re.compile(r"^((?:\[\d+\]\.)?)([A-Za-z.]+?)((?:\[\d+\])?)$")


def flag_of(field: str, items: list[str] | None = None, flags: dict[str, str] | None = None) -> str:
    """`[1].resources.ramMb` -> `--ram-mb (web-2)`: the option the user typed for an API field
    path, and which of several items it was about; the path itself when no option sets it.
    `flags`: a command's own words for some fields (`vm edit --name`), before FLAGS."""
    m = _FIELD.match(field)
    words = {**FLAGS, **(flags or {})}
    if m is None or m.group(2) not in words:
        return field
    flag = words[m.group(2)]
    if m.group(1) and items and len(items) > 1:
        i = int(m.group(1)[1:-2])
        flag += f" ({items[i]})" if i < len(items) else ""
    if m.group(3):
        flag += f" (the {_ordinal(int(m.group(3)[1:-1]) + 1)})"
    return flag


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def field_message(flag: str, message: str) -> str:
    """Pydantic's bounds in words, with the option's unit."""
    m = _BOUND.match(message)
    if m is None:
        return message
    return f"must be at {'least' if m.group(1) == 'greater' else 'most'} {m.group(2)}{UNITS.get(flag.split()[0], '')}"


def unreachable(url: str, exc: BaseException) -> str:
    """Why `url` could not be reached, as a sentence (no `[Errno 111]`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return f"cannot reach vmplane at {url}: the host name does not resolve"
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ECONNREFUSED:
                return f"cannot reach vmplane at {url}: connection refused; is `vmplane serve` running?"
            return f"cannot reach vmplane at {url}: {os.strerror(seen.errno).lower()}"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"cannot reach vmplane at {url}: no answer in time (is the server overloaded, or the address wrong?)"
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(exc)).strip()
    if "refused" in text.lower():
        return f"cannot reach vmplane at {url}: connection refused; is `vmplane serve` running?"
    return f"cannot reach vmplane at {url}: {text[:1].lower() + text[1:] if text else type(exc).__name__}"


def refuse_private_key(text: str, given: str) -> None:
    """Exit 2 when an --ssh-key value is a private key (before anything is sent anywhere)."""
    head = text.lstrip()[:200]
    if "PRIVATE KEY" in head or head.startswith("PuTTY-User-Key-File"):
        pub = Path(given[1:]).expanduser().with_name(Path(given[1:]).name + ".pub") if given.startswith("@") else None
        hint = f" (@{pub})" if pub is not None and pub.is_file() else ""
        err.print(f"[red]error:[/red] --ssh-key: that is a private key; give the .pub file{rich_escape(hint)}", highlight=False)
        raise typer.Exit(2)


def did_you_mean(ref: str, names: list[str]) -> str:
    """`; did you mean web?` for the names closest to `ref`, or nothing."""
    close = difflib.get_close_matches(ref, names, n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + (close[0] if len(close) == 1 else ", ".join(close[:-1]) + " or " + close[-1]) + "?"


class Client:
    def __init__(self, url: str | None) -> None:
        self.url = (url or os.environ.get("VMPLANE_URL") or "http://127.0.0.1:8080").rstrip("/")
        key, self.key_source = find_key()
        self.http = api_client(self.url, key, timeout=30)
        self.items: list[str] | None = None
        """the names a bulk request's items stand for, in order (for its errors' `[i].`)"""
        self.flags: dict[str, str] = {}
        """this command's words for API fields where they differ from FLAGS (`name`: `--name`)"""

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
            hint = did_you_mean(ref, self.vm_names())
            err.print(f"[red]error:[/red] {rich_escape(f'VM {ref!r} does not exist (no VM has that id or name){hint}')}", highlight=False)
            raise typer.Exit(1)
        return vm

    def vm_names(self, pages: int = 20) -> list[str]:
        """The names of the caller's VMs (the first `pages` pages of 500), for suggestions."""
        return list(self.vm_names_by_id(pages).values())

    def vm_names_by_id(self, pages: int = 20) -> dict[str, str]:
        """id -> name of the caller's VMs (the first `pages` pages of 500)."""
        return {v["id"]: v["name"] for v in self.listing("/api/v1/vms", pages=pages)}

    def task_names(self, job: dict[str, Any]) -> dict[str, str]:
        """The names of the VMs a job's tasks are about (a deleted one keeps its id)."""
        if not any(t["resourceId"].startswith("vm-") for t in job.get("tasks") or ()):
            return {}
        return self.vm_names_by_id()

    def template_names(self) -> list[str]:
        """The names of the templates the caller can use (its own and the shared ones)."""
        return [t["name"] for t in self.listing("/api/v1/templates", pages=20)]

    def listing(self, path: str, params: dict[str, Any] | None = None, pages: int | None = None) -> list[dict[str, Any]]:
        """Every item of a listing (pages of 500, following nextPageToken), or of its first `pages` pages."""
        query: dict[str, Any] = {"limit": 500, **(params or {})}
        found: list[dict[str, Any]] = []
        read = 0
        while pages is None or read < pages:
            page = self.request("GET", path, params=query)
            found += page["items"]
            read += 1
            if not page.get("nextPageToken"):
                break
            query["pageToken"] = page["nextPageToken"]
        return found

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
                    err.print(f"[red]error:[/red] {unreachable(self.url, exc)}", highlight=False)
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
            err.print(f"[red]error:[/red] {rich_escape(unreachable(self.url, exc))}", highlight=False)
            raise typer.Exit(2) from None

    def _fail(self, resp: httpx.Response) -> None:
        """Exit 1 with the server's refusal, in the CLI's words: a field path the user did not
        type (`[0].resources.ramMb`) becomes the option they did (`--ram-mb`)."""
        try:
            body = resp.json()
            message = body.get("error") or body
        except ValueError:
            body, message = {}, resp.text
        details = body.get("details") if isinstance(body, dict) else None
        field = details.get("field") if isinstance(details, dict) else None
        if isinstance(message, str) and isinstance(field, str):
            flag = flag_of(field, self.items, self.flags)
            if flag != field:
                bare = re.sub(r"^\[\d+\]\.", "", field)
                rest = message
                for path in dict.fromkeys((field, bare)):  # `[0].name`, then `name`: each once
                    if rest.startswith(path + ":"):
                        rest = rest[len(path) + 1 :].strip()
                    else:  # the path as a word (`name 'x' is not valid`), not inside one (`named`)
                        rest = re.sub(rf"(?<![\w.\-\]]){re.escape(path)}(?![\w.\-])", flag, rest)
                rest = rest.replace(f"{flag} ", "", 1) if rest.startswith(flag + " ") else rest
                if field.endswith("templateId") and "does not exist" in rest:
                    rest += did_you_mean(str(rest.split("'")[1]) if rest.count("'") >= 2 else "", self.template_names())
                message = f"{flag}: {field_message(flag, rest)}"
        err.print(f"[red]error ({resp.status_code}):[/red] {rich_escape(str(message))}", highlight=False)
        if resp.status_code == 401:
            err.print(self.key_source, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)

    def wait_job(self, job_id: str, show_progress: bool, timeout: float | None = None, names: dict[str, str] | None = None) -> dict[str, Any]:
        """Poll a job until it ends; with `show_progress`, draw its progress as the server
        records it (the mean of its tasks'), how many of its tasks are done, and the time since
        it was submitted, ticking; `names` (resource id -> name) says what it works on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll: Callable[[], dict[str, Any]] = lambda: self.request("GET", f"/api/v1/jobs/{job_id}")  # noqa: E731
        job = poll()
        if show_progress:
            columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[tally]}"), SinceColumn())
            with Progress(*columns, console=err, transient=False) as bar:
                t = bar.add_task(job_doing(job, names or {}), total=100, tally=job_tally(job), since=_epoch(job["createdAt"]), until=None)
                while job["state"] not in FINAL:
                    bar.update(t, completed=job["progress"], tally=job_tally(job))
                    _sleep_or_timeout(deadline)
                    job = poll()
                end = _epoch(job["finishedAt"]) if job.get("finishedAt") else time.time()
                bar.update(t, completed=100 if job["state"] == "succeeded" else job["progress"], tally=job_tally(job), until=end)
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


class SinceColumn(ProgressColumn):
    """H:MM:SS since the job was submitted (its `createdAt`: `job wait` on an older job shows
    its real age), ticking with the display, frozen at its end."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        since, until = task.fields.get("since"), task.fields.get("until")
        if since is None:
            return Text("-:--:--")
        seconds = max(0, int((until or time.time()) - min(since, time.time())))  # a server clock ahead of ours: 0, not negative
        return Text(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", style="progress.elapsed")


def _epoch(stamp: str) -> float | None:
    """The API's `2026-12-07T11:25:16Z` as seconds since the epoch (None if it is not one)."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _sleep_or_timeout(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        err.print("[red]error:[/red] timed out waiting for the job")
        raise typer.Exit(3)
    time.sleep(0.3)


def interactive(json_out: bool) -> bool:
    return not json_out and sys.stdout.isatty()
