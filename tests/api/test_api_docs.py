"""/docs (Swagger UI) and /redoc work offline: their scripts, styles and icon come from vmplane
itself (src/vmplane/ui/vendor/{swagger-ui,redoc}, vendored by scripts/vendor-api-docs.sh), and
no served page names another host. The browser test (tests/e2e/test_api_docs_browser.py) loads
them with the network closed."""

import re
from typing import Any
from urllib.parse import urlsplit

from vmplane.api import docs
from vmplane.api.faces import FACES, FaceListener
from vmplane.api.ui import UI_DIR

# URLs an HTML page may carry that make the browser fetch nothing: the SVG namespace, and the
# OpenAPI/Swagger spec links inside Swagger UI's own markup are in its bundle, not in the page.
_INERT = {"http://www.w3.org/2000/svg"}


def _other_hosts(text: str, host: str) -> set[str]:
    """Every http(s) URL in `text` that names a host other than `host`."""
    urls = set(re.findall(r"https?://[^\s\"'`<>)]+", text)) - _INERT
    return {u for u in urls if urlsplit(u).netloc != host}


async def test_docs_pages_name_no_other_host_and_their_assets_are_served(server: Any) -> None:
    bare = server.client_with("")
    del bare.headers["X-API-Key"]  # the documentation is public, like the console's files
    host = urlsplit(str(bare.base_url)).netloc
    for path in (docs.DOCS_URL, docs.REDOC_URL, docs.OAUTH2_REDIRECT_URL):
        page = await bare.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert _other_hosts(page.text, host) == set(), path
        assert "cdn.jsdelivr" not in page.text and "fonts.googleapis" not in page.text, path
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "http" not in csp, path
        assert page.headers["x-content-type-options"] == "nosniff"
        # every script, style and icon the page names is served here, without credentials
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        for ref in refs:
            assert ref.startswith("/"), (path, ref)
            f = await bare.get(ref)
            assert f.status_code == 200, (path, ref)
            if ref.endswith(".js"):
                assert f.headers["content-type"].startswith("text/javascript"), ref
    swagger = (await bare.get(docs.DOCS_URL)).text
    assert docs.SWAGGER_JS in swagger and docs.SWAGGER_CSS in swagger and '"validatorUrl": null' in swagger
    assert docs.REDOC_JS in (await bare.get(docs.REDOC_URL)).text
    spec = await bare.get("/openapi.json")  # what both pages render
    assert spec.status_code == 200 and "/api/v1/vms" in spec.json()["paths"]
    await bare.aclose()


async def test_every_served_html_page_names_no_other_host(server: Any) -> None:
    """The console's pages too: a page the server sends never makes the browser reach out."""
    bare = server.client_with("")
    del bare.headers["X-API-Key"]
    host = urlsplit(str(bare.base_url)).netloc
    pages = [docs.DOCS_URL, docs.REDOC_URL, docs.OAUTH2_REDIRECT_URL, "/ui/"]
    pages += [f"/ui/{p.relative_to(UI_DIR).as_posix()}" for p in UI_DIR.rglob("*.html")]
    for path in pages:
        r = await bare.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert _other_hosts(r.text, host) == set(), path
    await bare.aclose()


def test_vendored_assets_are_pinned_with_their_licences() -> None:
    vendor = UI_DIR / "vendor"
    sw, rd = vendor / "swagger-ui", vendor / "redoc"
    assert "Apache License" in (sw / "LICENSE").read_text() and (sw / "NOTICE").is_file()
    assert "MIT" in (rd / "LICENSE").read_text()
    assert re.search(r"swagger-ui-dist` \d+\.\d+\.\d+", (sw / "README.md").read_text())
    assert re.search(r"redoc` \d+\.\d+\.\d+", (rd / "README.md").read_text())
    assert "cdn.redoc.ly" not in (rd / "redoc.standalone.js").read_text()  # its menu logo (the script says)
    for asset in (docs.SWAGGER_JS, docs.SWAGGER_CSS, docs.FAVICON, docs.REDOC_JS):
        assert (UI_DIR / asset.removeprefix("/ui/")).is_file(), asset


def test_the_native_face_listener_serves_the_pages_and_their_assets_as_they_are() -> None:
    """On `--face native=HOST:PORT` the pages and the files they name are not put under /api/v1."""
    native = FaceListener(None, FACES["native"])  # type: ignore[arg-type]
    for path in (docs.DOCS_URL, docs.REDOC_URL, docs.OAUTH2_REDIRECT_URL, docs.SWAGGER_JS, docs.SWAGGER_CSS, docs.FAVICON, docs.REDOC_JS):
        assert native.rewrite(path) == path
    assert native.rewrite("/vms") == "/api/v1/vms"
