"""End-to-end test hooks: say where artifacts went (tests record them with
`record_property("artifacts", path)`), at the end of the run, even when output is captured;
and the fixtures the web console's browser tests share (ui_browser, ui_server, ui_sim_server,
ui_page)."""

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane import procfs

from ..support import admin_key, free_port, require_qemu, serve, wait_ready
from ..ui_support import CHROMIUM, require_browser


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    seen = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "artifacts" and value not in seen:
                    seen.add(value)
                    terminalreporter.write_line(f"artifacts of {report.nodeid.split('::')[-1]}: {value}")


# --- the web console's browser tests (helpers in tests/ui_support.py) ---


@dataclass
class UiServer:
    origin: str
    key: str
    api: httpx.Client  # /api/v1 with the admin key
    data_dir: Path
    proc: "subprocess.Popen[bytes]"


@pytest.fixture(scope="module")
def ui_browser() -> Iterator[Any]:
    """One chromium for the module (contexts are cheap, browsers are not)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def _ui_serve(prefix: str, args: list[str], env: dict[str, str] | None = None) -> Iterator[UiServer]:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    proc = serve(root / "data", port, root / "server.log", args, env)
    try:
        wait_ready(origin, proc, timeout=120)
        key = admin_key(root / "data")
        with httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": key}, timeout=30) as api:
            yield UiServer(origin, key, api, root / "data", proc)
    finally:
        proc.kill()
        proc.wait()
        for pid, _argv in procfs.processes_mentioning(str(root) + "/"):
            procfs.kill(pid)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ui_server() -> Iterator[UiServer]:
    """One `vmplane serve --driver qemu --accel tcg` for the module; its guests and helpers are
    killed at the end (the per-test cleanup in tests/conftest.py does not see module scope)."""
    require_qemu()
    with _ui_serve("vmplane-ui-", ["--driver", "qemu", "--accel", "tcg"]) as server:
        yield server


@pytest.fixture(scope="module")
def ui_sim_server() -> Iterator[UiServer]:
    """One `vmplane serve --driver sim` for the module (no guest boots: for what the page does
    with the API's answers); a create of a VM named fail-* fails (the sim driver's fault)."""
    with _ui_serve("vmplane-uisim-", ["--driver", "sim"], {"VMPLANE_SIM_FAIL_PATTERN": "^fail-"}) as server:
        yield server


@pytest.fixture
def ui_page(request: pytest.FixtureRequest, ui_browser: Any) -> Iterator[Callable[..., Any]]:
    """ui_page(dpr=1, viewport=(1280, 800), path="", server=ui_server) -> a Playwright page signed
    in (the key in sessionStorage), opened at /ui/<path>. At the end: no script errors on any page
    it made, and no request left vmplane's origin."""
    contexts: list[Any] = []
    errors: list[str] = []
    requests: list[str] = []
    origins: set[str] = set()

    def make(dpr: float = 1, viewport: tuple[int, int] = (1280, 800), path: str = "", server: UiServer | None = None) -> Any:
        srv = server or request.getfixturevalue("ui_server")
        origins.add(srv.origin + "/")
        context = ui_browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=dpr)
        contexts.append(context)
        context.add_init_script(f"sessionStorage.setItem('vmplane.apiKey', {srv.key!r})")
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{srv.origin}/ui/{path}")
        return page

    yield make
    for c in contexts:
        c.close()
    assert errors == [], errors
    foreign = sorted({u for u in requests if not any(u.startswith(o) for o in origins)})
    assert foreign == [], foreign
