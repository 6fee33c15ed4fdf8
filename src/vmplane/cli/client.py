"""The one HTTP client helper of the CLI: base URL, errors as messages, job waiting."""

import os
import sys
from pathlib import Path
import time
from typing import Any, Callable

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
FINAL = {"succeeded", "failed", "partial", "cancelled"}


class Client:
    def __init__(self, url: str | None) -> None:
        self.url = (url or os.environ.get("VMPLANE_URL") or "http://127.0.0.1:8080").rstrip("/")
        headers = {}
        key = os.environ.get("VMPLANE_API_KEY")
        if not key:  # the owner key `vmplane serve` wrote on first start (`make run` uses ./.vmplane)
            path = Path(os.environ.get("VMPLANE_DATA_DIR", ".vmplane")) / "admin-api-key"
            if path.is_file():
                key = path.read_text().strip()
        if key:
            headers["X-API-Key"] = key
        self.http = httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]error:[/red] cannot reach vmplane at {self.url}: {exc}")
            raise typer.Exit(2) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                message = body.get("error") or body
            except ValueError:
                message = resp.text
            err.print(f"[red]error ({resp.status_code}):[/red] {message}")
            raise typer.Exit(1)
        return resp.json() if resp.content else None

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


def _sleep_or_timeout(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        err.print("[red]error:[/red] timed out waiting for the job")
        raise typer.Exit(3)
    time.sleep(0.3)


def interactive(json_out: bool) -> bool:
    return not json_out and sys.stdout.isatty()
