"""ASGI middleware: request body limits (size, time, JSON nesting) and Idempotency-Key replay
(per credential and its rights; answers that carry a secret are never kept);
`refuse`, the answer of a middleware that turns a request away, in the shape of the face asked."""

import asyncio
import hashlib
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import clock
from ..errors import InvalidRequest
from ..store import Store
from ..store import idempotency as idem_q


async def send_json(send: Send, status: int, body: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def refuse(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None, field: str | None = None
) -> None:
    """Answer `status` before any route runs, in the error shape of the face the path belongs
    to (the native one's elsewhere). A WebSocket gets the status as its handshake's answer."""
    response = error_response(scope, status, message, code, headers, field)
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": response.raw_headers})
            await send({"type": "websocket.http.response.body", "body": response.body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await response(scope, receive, send)


def error_response(scope: Scope, status: int, message: str, code: str, headers: dict[str, str] | None = None, field: str | None = None) -> Any:
    """An error response in the shape of the face `scope`'s path belongs to (else native)."""
    app = scope.get("app")
    own = getattr(getattr(app, "state", None), "errors", None)  # inside a face's own application
    response: Any = own.http(status, message) if own is not None else None
    for route in getattr(app, "routes", ()) if response is None else ():
        prefix = getattr(route, "path", None)
        errors = getattr(getattr(getattr(route, "app", None), "state", None), "errors", None)
        if errors is not None and prefix and (scope["path"] == prefix or scope["path"].startswith(prefix + "/")):
            response = errors.http(status, message)
            break
    if response is None:
        response = JSONResponse({"error": message, "code": code, "details": {"field": field} if field else {}}, status_code=status)
    response.headers.update(headers or {})
    return response


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def json_depth(body: bytes, limit: int) -> int:
    """How deeply `body` (JSON text) nests arrays and objects, counted only as far as `limit`
    + 1. Cheap when it cannot be deep: fewer opening brackets than `limit` is answered by two
    counts; else strings are cut out (a regular expression) and only the brackets left are
    walked (a 1 MiB body of brackets: ~20 ms, one nested past `limit`: ~1 ms)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return 0
    if b'"' in body:
        body = _STRINGS.sub(b"", body)
    depth = deepest = 0
    for c in body.translate(None, _NOT_BRACKETS):
        if c == 91 or c == 123:  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


class StatusWatch:
    """Wraps `send` to remember the response status (500 until one is sent)."""

    def __init__(self, send: Send) -> None:
        self.status = 500
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])  # as ASGI gives them
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


class BodyLimit:
    """Read each request's body before the app does, and refuse it when it is larger than
    `max_bytes` (413), takes longer than `timeout` seconds to arrive (408: a client trickling
    bytes holds a connection and a buffer), or nests JSON deeper than `max_depth` (400, in the
    face's shape: Python's parser would recurse until RecursionError).

    `streamed`: (method, path) of requests whose route reads the body itself, as it arrives,
    with limits of its own (a template's image upload); their body is not read here."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout: float = 30.0, max_depth: int = 64, streamed: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        self.app = app
        self.streamed = streamed
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.streamed:
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        too_big = f"the request body is larger than {self.max_bytes} bytes"
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await refuse(scope, receive, send, 413, too_big, "payload_too_large")
        body = b""
        more = True
        try:
            async with asyncio.timeout(self.timeout):
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body += msg.get("body", b"")
                    more = msg.get("more_body", False)
                    if len(body) > self.max_bytes:
                        return await refuse(scope, receive, send, 413, too_big, "payload_too_large")
        except TimeoutError:
            return await refuse(
                scope, receive, send, 408, f"the request body did not arrive within {self.timeout:g} s", "request_timeout",
                headers={"connection": "close"},
            )  # fmt: skip
        if json_depth(body, self.max_depth) > self.max_depth:
            return await refuse(scope, receive, send, 400, f"body: the JSON nests deeper than {self.max_depth} levels", "invalid_request", field="body")
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.setdefault("state", {})["raw_body"] = body
        await self.app(scope, replay, send)


async def json_body(request: Request) -> Any:
    """The request's body as JSON (the body-limit middleware above kept its bytes);
    InvalidRequest naming `body` when there is none or it is not JSON."""
    raw = request.scope.get("state", {}).get("raw_body", b"") or await request.body()
    if not raw:
        raise InvalidRequest("the request needs a JSON body", field="body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON", field="body") from None


NO_STORE = {"Cache-Control": "no-store"}
"""Headers of a response that carries a secret (a new API key, an owner key, a join token, a
webhook secret, a console token): no HTTP cache keeps it, and Idempotency does not either."""

SECRET_NOT_KEPT = "idempotency_replay_unavailable"


def _carries_secret(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "cache-control" and "no-store" in v.lower() for k, v in headers)


def caller_of(scope: Scope) -> str:
    """Who is asking, for Idempotency-Key scoping: the credential (an API key's id; a JWT's
    subject; a WebSocket ticket's key) with everything that decides what it may do: its
    organization, role, team and read-only flag. Another credential of the same user, or the
    same key after its user's role changed, shares no answer with it: its request runs, and
    is authorized, as if the key had never been used (at most 128 characters: a digest)."""
    who = scope.get("state", {}).get("principal")
    if who is None:
        return "anonymous"
    rights = f"{who.credential}\0{who.user_id}\0{who.org_id}\0{who.role}\0{who.team_id or ''}\0{int(who.read_only)}"
    return "cred:" + hashlib.sha256(rights.encode()).hexdigest()


class Idempotency:
    """A POST with `Idempotency-Key` is answered once; the same key from the same credential
    (with the same rights: `caller_of`) gets the first response again (24 h). The same key
    with a different request gets 409. Only what was authorized is replayed: the answer is
    kept for that credential alone, and a request with no valid credential, or one whose
    first answer was a refusal (401, 403, 429), is never kept or replayed.

    The key is reserved in the store (a row with status 0) before the request runs, so two
    replicas given the same key at once run it once: the second waits for the first's
    answer and replays it. A reservation left by a replica that died mid-request lapses
    after IN_FLIGHT seconds.

    A response that carries a secret (`Cache-Control: no-store`, see NO_STORE: API keys,
    organization owner keys, join tokens and node credentials, webhook secrets, console
    tokens and WebSocket tickets) is never stored: the key remembers only that the request
    succeeded, and a replay answers 409 `idempotency_replay_unavailable` naming the status and
    the id of what was made, so the request is not run twice and the secret is shown once."""

    TTL = 24 * 3600
    IN_FLIGHT = 60.0
    PENDING = 0

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        key = _header(scope, b"idempotency-key")
        if key is None or scope.get("state", {}).get("principal") is None:
            # without a valid credential the request is refused (or open): nothing to keep
            return await self.app(scope, receive, send)
        if not 1 <= len(key) <= 255:
            return await send_json(send, 400, {"error": "Idempotency-Key must be 1-255 characters", "code": "invalid_request", "details": {"field": "Idempotency-Key"}})
        body = scope.get("state", {}).get("raw_body", b"")
        digest = hashlib.sha256(scope["path"].encode() + b"\0" + scope.get("query_string", b"") + b"\0" + body).hexdigest()
        caller = caller_of(scope)
        lock = self._locks.setdefault((caller, key), asyncio.Lock())  # same process: no polling
        try:
            async with lock:
                found = await self._reserve(caller, key, digest)
                if found is not None:
                    if found.request_hash != digest:
                        return await send_json(send, 409, {"error": "this Idempotency-Key was used with a different request", "code": "idempotency_conflict", "details": {}})
                    headers = [(k.encode(), v.encode()) for k, v in found.headers] + [(b"idempotent-replayed", b"true")]
                    await send({"type": "http.response.start", "status": found.status_code, "headers": headers})
                    await send({"type": "http.response.body", "body": found.body.encode()})
                    return
                captured: dict[str, Any] = {"body": b""}

                async def capture(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        captured["status"] = message["status"]
                        captured["headers"] = [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
                    elif message["type"] == "http.response.body":
                        captured["body"] += message.get("body", b"")
                    await send(message)

                done = False
                try:
                    await self.app(scope, receive, capture)
                    if captured.get("status", 500) < 500 and captured["status"] not in (401, 403, 429):
                        status, headers, text = captured["status"], [h for h in captured["headers"] if h[0].lower() != "content-length"], captured["body"].decode("utf-8", "replace")
                        if _carries_secret(headers):
                            status, headers, text = _secret_refusal(status, text)
                        async with self.store.write() as conn:
                            await idem_q.complete(conn, caller, key, status_code=status, headers=headers, body=text)
                        done = True
                finally:
                    if not done:  # no answer worth replaying: the key is free again
                        async with self.store.write() as conn:
                            await idem_q.forget(conn, caller, key)
        finally:
            if not lock.locked():
                self._locks.pop((caller, key), None)

    async def _reserve(self, caller: str, key: str, digest: str) -> Any:
        """None once this request holds the key; else the stored answer to replay (or to
        refuse, if its request differs), after waiting for a request still running with it."""
        while True:
            now = clock.now()
            async with self.store.write() as conn:
                found = await idem_q.lookup(conn, caller, key)
                stale = found is not None and (
                    found.created_at <= now - self.TTL or (found.status_code == self.PENDING and found.created_at < now - self.IN_FLIGHT)
                )
                if stale:
                    await idem_q.forget(conn, caller, key)
                if found is None or stale:
                    row = {"caller": caller, "key": key, "request_hash": digest, "status_code": self.PENDING, "headers": [], "body": "", "created_at": now}
                    if await idem_q.remember(conn, row):
                        return None
                    continue  # another replica reserved it just now
            if found.status_code != self.PENDING or found.request_hash != digest:
                return found
            await asyncio.sleep(0.05)  # the same request is running on another replica


def _secret_refusal(status: int, body: str) -> tuple[int, list[tuple[str, str]], str]:
    """What a replay of a response that carried a secret answers instead of it."""
    try:
        made = json.loads(body)
    except ValueError:
        made = None
    made_id = made.get("id") if isinstance(made, dict) and isinstance(made.get("id"), (str, int)) else None
    refusal = {
        "error": "this request already succeeded; its answer carried a secret, which is shown only once and never kept "
        "for a replay" + (f" (it made {made_id})" if made_id is not None else ""),
        "code": SECRET_NOT_KEPT,
        "details": {"status": status, **({"id": made_id} if made_id is not None else {})},
    }
    return 409, [("content-type", "application/json"), ("cache-control", "no-store")], json.dumps(refusal)
