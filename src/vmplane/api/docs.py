"""The API documentation pages: Swagger UI at /docs and ReDoc at /redoc, with their scripts,
styles and icon served by vmplane itself from the package (src/vmplane/ui/vendor/swagger-ui and
ui/vendor/redoc, vendored from npm by scripts/vendor-api-docs.sh), never from a CDN: the pages
work on a host with no way out. FastAPI's own /docs and /redoc load them from a CDN, and Swagger
UI would also send the document to an online validator; both are turned off here.

The assets are under /ui/vendor/ (the web console's static files: open, no credentials), and
the pages carry a Content-Security-Policy that keeps every request they make on vmplane's own
origin."""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
VENDOR = "/ui/vendor"
SWAGGER_JS = f"{VENDOR}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{VENDOR}/swagger-ui/swagger-ui.css"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{VENDOR}/redoc/redoc.standalone.js"

PATHS = (DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL, SWAGGER_JS, SWAGGER_CSS, FAVICON, REDOC_JS)
"""every path the pages need: the native face's own listener serves them as they are"""

# The pages' own scripts are inline (FastAPI's templates), hence 'unsafe-inline' for scripts;
# ReDoc runs its search in a worker made from a blob. Nothing may be fetched from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(_HEADERS)
    return response


def install(app: FastAPI) -> None:
    """/docs, /docs/oauth2-redirect and /redoc for `app` (made with docs_url=None, redoc_url=None)."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI", oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=root + SWAGGER_JS, swagger_css_url=root + SWAGGER_CSS, swagger_favicon_url=root + FAVICON,
            swagger_ui_parameters={"validatorUrl": None},  # no document sent to validator.swagger.io
        ))  # fmt: skip

    async def oauth2_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc", redoc_js_url=root + REDOC_JS,
            redoc_favicon_url=root + FAVICON, with_google_fonts=False,
        ))  # fmt: skip

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(REDOC_URL, redoc, methods=["GET"], include_in_schema=False)
