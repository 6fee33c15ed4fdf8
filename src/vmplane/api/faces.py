"""The faces: every API vmplane serves, each under its own path prefix of the one application,
and how any of them is served at the root of a listener of its own.

`vmplane serve --face fastvm=127.0.0.1:8081` serves the FastVM face at
`http://127.0.0.1:8081/v1/vms` as well as at `/compat/fastvm/v1/vms` of the main listener:
some published clients throw away the path of their base URL. A face's own listener is not a
second application: it hands every request to the main one (same middleware, credentials,
rate limits, audit, metrics, runtime) with the face's prefix put in front of the path. Paths
that already carry the prefix pass unchanged, so the links a face hands out (a WebSocket path,
a `Location`) work on both listeners, as do the face's `root_paths` (health, metrics).

A face listener may act as one configured credential (`--face NAME=HOST:PORT,as-key-file=PATH`),
for clients written from a contract that has no authentication: a request that arrives on it
without credentials of its own is handed on carrying that API key (`X-API-Key`), so the identity
middleware authenticates, limits and audits it as that key, as if the client had sent it; a
request with its own credentials is judged by those alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from . import docs, native
from .compat import bluelobster, fastvm, hypersdk, volant
from .identity import presented

if TYPE_CHECKING:
    from ..runtime import Runtime


@dataclass(frozen=True, slots=True)
class Face:
    name: str
    prefix: str
    """where the face lives in the main application (no trailing slash)"""
    install: Callable[[FastAPI, Runtime], None]
    """install(app, runtime): adds the face's routes (or mounts its application) to `app`"""
    root_paths: tuple[str, ...] = ()
    """paths of the main application that the face's own listener serves as they are"""
    contract: str = ""
    """what the face serves, for `--help` and errors"""


HEALTH_PATHS = ("/healthz", "/livez", "/readyz", "/metrics")


def _install_native(app: FastAPI, _rt: Runtime) -> None:
    app.include_router(native.router())


def _install_fastvm(app: FastAPI, rt: Runtime) -> None:
    app.mount(fastvm.PREFIX, fastvm.build(rt))


def _install_volant(app: FastAPI, rt: Runtime) -> None:
    app.mount(volant.PREFIX, volant.build(rt))


def _install_bluelobster(app: FastAPI, rt: Runtime) -> None:
    app.mount(bluelobster.PREFIX, bluelobster.build(rt))


def _install_hypersdk(app: FastAPI, rt: Runtime) -> None:
    app.mount(hypersdk.PREFIX, hypersdk.build(rt, getattr(app.state, "metrics", None)))


FACES: dict[str, Face] = {
    f.name: f
    for f in (
        Face("native", "/api/v1", _install_native, (*HEALTH_PATHS, "/openapi.json", *docs.PATHS),
             "the native API (cluster contract)"),
        Face("fastvm", "/compat/fastvm", _install_fastvm, ("/metrics",), "the FastVM public API"),
        Face("bluelobster", "/compat/bluelobster", _install_bluelobster, ("/metrics",), "the Blue Lobster instance API"),
        Face("volant", "/compat/volant", _install_volant, ("/metrics",), "the Volant daemon API"),
        Face("hypersdk", "/compat/hypersdk", _install_hypersdk, (), "the HyperSDK daemon API"),  # its /metrics is its own
    )
}  # fmt: skip


def face(name: str) -> Face:
    try:
        return FACES[name]
    except KeyError:
        raise ValueError(f"unknown face {name!r}; known: {', '.join(FACES)}") from None


def install_all(app: FastAPI, rt: Runtime) -> None:
    for f in FACES.values():
        f.install(app, rt)


class FaceListener:
    """The ASGI application of a face's own listener: the main application, seen from the
    face's prefix. It runs no lifespan of its own (the main listener's starts the runtime).
    `as_key`: the API key a request without credentials of its own presents."""

    def __init__(self, app: ASGIApp, face: Face, as_key: str | None = None) -> None:
        self.app = app
        self.face = face
        self._header = (b"x-api-key", as_key.encode("latin-1")) if as_key else None

    def rewrite(self, path: str) -> str:
        prefix = self.face.prefix
        if path == prefix or path.startswith(prefix + "/") or path in self.face.root_paths:
            return path
        return prefix + (path if path != "/" else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = self.rewrite(scope["path"])
            if path != scope["path"]:
                raw = scope.get("raw_path")  # the path as sent (percent-encoded)
                raw_path = self.face.prefix.encode() + raw if raw and path != self.face.prefix else path.encode()
                scope = {**scope, "path": path, "raw_path": raw_path}
            if self._header is not None:
                scope = self._with_key(scope, self._header)
        elif scope["type"] == "lifespan":
            return await _no_lifespan(receive, send)
        await self.app(scope, receive, send)


    @staticmethod
    def _with_key(scope: Scope, header: tuple[bytes, bytes]) -> Scope:
        """The request as if it had sent the listener's key, unless it presents a credential."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if presented(scope, headers) is not None:
            return scope
        return {**scope, "headers": [*scope.get("headers", []), header]}


async def _no_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def listener_app(app: ASGIApp, name: str, as_key: str | None = None) -> FaceListener:
    """The application to serve face `name` at the root of a listener (acting as the API key
    `as_key` for requests that bring no credentials)."""
    return FaceListener(app, face(name), as_key)
