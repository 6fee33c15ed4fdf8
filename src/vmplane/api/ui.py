"""The web console: static files (src/vmplane/ui/) served at /ui by vmplane itself.

The pages are plain ES modules talking to the native API with the API key the user enters
(kept in sessionStorage); the files themselves need no credentials. A strict
Content-Security-Policy keeps every request on vmplane's own origin.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
PREFIX = "/ui"

# xterm.js writes <style> elements of its own, hence 'unsafe-inline' for styles (never scripts)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class _UiFiles:
    """StaticFiles with the console's security headers, and `.js` always as JavaScript
    (module scripts are refused under any other type)."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=UI_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in (b"cache-control",)]
                if scope["path"].endswith(".js"):
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
                    headers.append((b"content-type", b"text/javascript; charset=utf-8"))
                message = {**message, "headers": headers + _HEADERS}
            await send(message)

        await self.files(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.add_api_route(PREFIX, lambda: RedirectResponse(f"{PREFIX}/", status_code=307), include_in_schema=False)
    # a browser pointed at vmplane itself lands in the console (a face's own listener serves
    # its face at /: api/faces.py rewrites that path before it gets here)
    app.add_api_route("/", lambda: RedirectResponse(f"{PREFIX}/", status_code=307), include_in_schema=False)
    app.mount(PREFIX, _UiFiles(), name="ui")
