"""Authentication, rate limits and the audit trail, for every request.

Sets `request.state.principal` (or `auth_error`) from `X-API-Key`, `Authorization: Bearer`
(an API key or a JWT), or — for requests vmplane makes to itself, such as a schedule
replaying its request — a per-process secret naming the schedule's owner. Routes then
require a principal (401) and the right role (403). Each credential has a token bucket
(429 with Retry-After). Every mutation is written to the audit log, refused ones included.
"""

import hmac
import time
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from .. import clock
from ..auth import ADMIN_USER, DEFAULT_ORG, Principal, Role
from ..errors import Unauthorized
from ..store import tenancy as t_q
from .metrics import route_template
from .middleware import StatusWatch, send_json

INTERNAL_HEADER = "x-vmplane-internal"
ACTING_AS_HEADER = "x-vmplane-acting-as"
MUTATIONS = {"POST", "PUT", "PATCH", "DELETE"}
AGENT_PATHS = "/api/v1/agent/"
VOLANT_PATHS = "/compat/volant/"


class TokenBuckets:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds until a request would be."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class Identity:
    def __init__(self, app: ASGIApp, rt: Any) -> None:
        self.app = app
        self.rt = rt
        self.buckets = TokenBuckets(rt.settings.rate_limit_per_second, rt.settings.rate_limit_burst)

    async def _resolve(self, scope: Scope, headers: dict[str, str]) -> Principal | None:
        t = self.rt.tenancy
        token = headers.get(INTERNAL_HEADER)
        if token is not None and hmac.compare_digest(token.encode(), self.rt.internal_token.encode()):
            user_id, _, org_id = headers.get(ACTING_AS_HEADER, "").partition("@")
            return await t.principal_for_internal(user_id, org_id)
        key = headers.get("x-api-key") or headers.get("x-volant-api-key")  # the latter: the Volant face's header
        auth = headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            bearer = auth[7:].strip()
            if not bearer.startswith("vmp_"):
                return await t.principal_for_jwt(bearer)
            key = bearer
        if key is None and (scope["type"] == "websocket" or scope["path"].startswith(VOLANT_PATHS)):
            # browsers cannot set WebSocket headers; Volant's clients may send api_key=
            for part in scope.get("query_string", b"").decode().split("&"):
                name, _, value = part.partition("=")
                if name in ("apiKey", "api_key"):
                    key = unquote(value)
        if key is not None:
            return await t.principal_for_key(key)
        if self.rt.settings.insecure_no_auth:
            return Principal(DEFAULT_ORG, ADMIN_USER, "admin", Role.OWNER, credential="insecure-no-auth")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith(AGENT_PATHS):
            # node agents authenticate with their own credentials (api/native/agents.py), are
            # not rate-limited as users, and their heartbeats are not audited
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        state = scope.setdefault("state", {})
        principal: Principal | None = None
        try:
            principal = await self._resolve(scope, headers)
        except Unauthorized as exc:
            state["auth_error"] = exc.message
        state["principal"] = principal
        if principal is not None and scope["type"] == "http" and principal.credential != "internal":
            wait = self.buckets.take(principal.credential or principal.user_id)
            if wait > 0:
                return await send_json(
                    send, 429, {"error": f"rate limit exceeded; retry in {wait:.1f} s", "code": "rate_limited", "details": {}},
                    extra_headers=[(b"retry-after", str(max(1, round(wait + 0.5))).encode())],
                )  # fmt: skip
        if scope["type"] != "http" or scope["method"] not in MUTATIONS:
            return await self.app(scope, receive, send)
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            await self._audit(scope, principal, watch.status)

    async def _audit(self, scope: Scope, who: Principal | None, status: int) -> None:
        client = scope.get("client")
        row = {
            "ts": clock.now(),
            "org_id": who.org_id if who else None,
            "actor": who.user_name if who else "unauthenticated",
            "credential": who.credential if who else None,
            "method": scope["method"],
            "route": route_template(scope),
            "path": scope["path"][:1000],
            "status": status,
            "outcome": "success" if status < 400 else ("denied" if status in (401, 403, 429) else "failed"),
            "remote": f"{client[0]}:{client[1]}" if client else None,
        }
        async with self.rt.store.write() as conn:
            await t_q.add_audit(conn, [row])
