"""/docs and /redoc in a real browser with the network closed: Debian's chromium (driven by
Playwright) whose only way out is a proxy that does not exist, and every request to a host other
than vmplane's refused and recorded. Swagger UI must show an operation, ReDoc must render the
API's title and an operation, and nothing may have been asked of another host. Screenshots at 1x and 2x
pixel ratio go to artifacts/screenshots-api-docs/ (beside the console's artifacts/screenshots/)."""

import shutil
from pathlib import Path
from typing import Any

import pytest

from ..support import free_port, serve, wait_ready
from ..ui_support import CHROMIUM, SCREENSHOTS, require_browser

pytestmark = pytest.mark.slow

SHOTS = SCREENSHOTS.parent / "screenshots-api-docs"


def test_api_docs_render_with_the_network_closed(tmp_path: Path, record_property: Any) -> None:
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    proc = serve(tmp_path / "data", port, tmp_path / "server.log", ["--driver", "sim"])
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    record_property("artifacts", str(SHOTS))
    try:
        wait_ready(origin, proc, timeout=60)
        with sync_playwright() as pw:
            # no route out: everything but loopback goes to a proxy on a closed port
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--proxy-server=http://127.0.0.1:9"])
            elsewhere: list[str] = []
            requests: list[str] = []
            errors: list[str] = []

            def refuse_elsewhere(route: Any) -> None:
                url = route.request.url
                if url.startswith(origin + "/") or url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    elsewhere.append(url)
                    route.abort("internetdisconnected")

            for scale in (1, 2):  # at 1x and 2x pixel ratio
                context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=scale)
                context.route("**/*", refuse_elsewhere)
                context.on("request", lambda r: requests.append(r.url))
                page = context.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                try:
                    page.goto(f"{origin}/docs")
                    # an operation of the native API, rendered by the vendored Swagger UI
                    op = page.locator(".opblock-summary-path[data-path='/api/v1/vms']").first
                    expect(op).to_be_visible(timeout=30_000)
                    expect(page.locator(".swagger-ui .info .title")).to_contain_text("vmplane")
                    op.click()  # expands: its parameters and responses are drawn too
                    expect(page.locator(".opblock.is-open .responses-wrapper").first).to_be_visible()
                    page.screenshot(path=str(SHOTS / f"docs-{scale}x.png"), full_page=False)

                    page.goto(f"{origin}/redoc")
                    expect(page.locator("h1").first).to_contain_text("vmplane", timeout=30_000)
                    expect(page.locator("[data-section-id^='operation/']").first).to_be_visible(timeout=30_000)
                    expect(page.locator(".menu-content")).to_be_visible()
                    page.screenshot(path=str(SHOTS / f"redoc-{scale}x.png"), full_page=False)
                except BaseException:
                    page.screenshot(path=str(SHOTS / f"failure-{scale}x.png"), full_page=True)
                    raise
                context.close()
            browser.close()
        assert errors == [], errors
        assert elsewhere == [], sorted(set(elsewhere))
        assert f"{origin}/ui/vendor/swagger-ui/swagger-ui-bundle.js" in requests
        assert f"{origin}/ui/vendor/redoc/redoc.standalone.js" in requests
        assert [u for u in requests if not u.startswith((origin + "/", "data:", "blob:"))] == []
    finally:
        proc.kill()
        proc.wait()
