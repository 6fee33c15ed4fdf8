"""Authentication, rate limits and the audit trail, for every request.

Sets `request.state.principal` (or `auth_error`) from `X-API-Key`, `Authorization: Bearer`
(an API key or a JWT), a one-time WebSocket ticket or key in `Sec-WebSocket-Protocol`, or —
for requests vmplane makes to itself, such as a schedule replaying its request — a
per-process secret naming the schedule's owner and the scope of the credential that made it
(services/scopes.py). Routes then require a principal (401) and the right role (403).

Token buckets: one per client address in front of authentication, which anonymous requests
spend (1) and failed authentications spend twice (2) and which, once empty, refuses (429 with
Retry-After) before any credential is looked up; after it, one per credential (an API key, or a
JWT's organization and subject) and one per organization, both of which a request needs.
(Open event streams and consoles are limited where they are served: vmplane/streams.py.)
Every mutation is written to the audit log, refused ones included; requests refused for their
credentials are counted into one row per address per minute (services/tenancy.FailedAuths).
"""

import hmac
import ipaddress
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import clock
from ..auth import ADMIN_USER, DEFAULT_ORG, Principal, Role
from ..errors import RateLimited, Unauthorized
from ..lru import TtlLru
from ..services import scopes
from ..services.scopes import ACTING_AS_HEADER, ACTING_SCOPE_HEADER, INTERNAL_HEADER
from ..store import tenancy as t_q
from .errors import retry_after
from .metrics import route_template
from .middleware import StatusWatch, refuse

if TYPE_CHECKING:
    from ..runtime import Runtime

MUTATIONS = {"POST", "PUT", "PATCH", "DELETE"}
AGENT_PATHS = "/api/v1/agent/"
METRICS_PATHS = frozenset(("/metrics", "/compat/hypersdk/metrics"))
"""where the scrape token (VMPLANE_METRICS_TOKEN) is taken: vmplane's metrics, and the
HyperSDK face's document of its own (api/compat/hypersdk)"""
VOLANT_PATHS = "/compat/volant/"
OPEN_PATHS = frozenset(("/healthz", "/livez", "/readyz", "/", "/ui"))
"""probes, and the web console's static files: answered without credentials or any lookup,
and not limited per address (a load balancer's health checks come from one address; one
load of the console is 20 files)"""
OPEN_PREFIX = "/ui/"
SUBPROTOCOL = "vmplane"
SUBPROTOCOL_KEY = "apikey."
SUBPROTOCOL_TICKET = "ticket."
SUBPROTOCOL_PREFIXES = (SUBPROTOCOL_KEY, SUBPROTOCOL_TICKET)
"""`Sec-WebSocket-Protocol: vmplane, apikey.<key>` (or `ticket.<ws ticket>`): the
credential of a WebSocket a browser opens; the answer names `vmplane` only"""


class TokenBuckets:
    """Token buckets by key (at most `maxsize`, least recently used out first: an evicted key
    comes back with a full bucket, so `maxsize` must exceed the keys active at once)."""

    def __init__(self, rate: float, burst: int, maxsize: int = 100_000) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: TtlLru[str, tuple[float, float]] = TtlLru(maxsize, 2 * burst / rate + 1)
        """key -> (tokens, when); an entry older than a full refill (from -burst) is as good as none"""

    def _tokens(self, key: str, now: float) -> float:
        found = self._buckets.get(key)
        if found is None:
            return float(self.burst)
        tokens, last = found
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 if allowed (and `cost` tokens spent), else seconds until a request would be."""
        now = time.monotonic()
        tokens = self._tokens(key, now)
        if tokens >= cost:
            self._buckets.set(key, (tokens - cost, now))
            return 0.0
        self._buckets.set(key, (tokens, now))
        return (cost - tokens) / self.rate

    def spend(self, key: str, cost: float) -> None:
        """Spend `cost` tokens whatever is left (down to -burst: a flood keeps the bucket empty)."""
        now = time.monotonic()
        self._buckets.set(key, (max(-self.burst, self._tokens(key, now) - cost), now))

    def wait(self, key: str) -> float:
        """0 if a request may go now (nothing spent), else seconds until one may."""
        tokens = self._tokens(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


def client_address(scope: Scope) -> str:
    """Who sends the request, for per-address limits: the peer's IPv4 address, or the /64 of
    an IPv6 one (one subscriber usually holds a whole /64)."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host: str = client[0]  # ASGI: [host, port]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network((host.split("%")[0], 64), strict=False))
        except ValueError:
            return host
    return host


def offered_subprotocols(scope: Scope) -> list[str]:
    return list(scope.get("subprotocols") or ())


def presented(scope: Scope, headers: dict[str, str]) -> tuple[str, str] | None:
    """The credential a request presents, unchecked: (kind, value) with kind `internal`,
    `key`, `bearer` (an API key, a JWT or the scrape token) or `ticket`; None for an anonymous
    request (which a face listener with `as-key-file` gives its key: api/faces.py)."""
    token = headers.get(INTERNAL_HEADER)
    if token is not None:
        return "internal", token
    key = headers.get("x-api-key") or headers.get("x-volant-api-key")  # the latter: the Volant face's header
    if key is not None:
        return "key", key
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return "bearer", auth[7:].strip()
    if scope["type"] == "websocket":
        # browsers cannot set headers on a WebSocket: a subprotocol carries the credential
        for proto in offered_subprotocols(scope):
            if proto.startswith(SUBPROTOCOL_KEY):
                return "key", proto[len(SUBPROTOCOL_KEY):]
            if proto.startswith(SUBPROTOCOL_TICKET):
                return "ticket", proto[len(SUBPROTOCOL_TICKET):]
    if scope["type"] == "websocket" or scope["path"].startswith(VOLANT_PATHS):
        # old WebSocket clients, and Volant's, which may send api_key= (kept out of logs:
        # see vmplane.logs)
        for part in scope.get("query_string", b"").decode("latin-1").split("&"):
            name, _, value = part.partition("=")
            if name in ("apiKey", "api_key") and value:
                return "key", unquote(value)
            if name == "wsTicket" and value and scope["type"] == "websocket":
                return "ticket", unquote(value)
    return None


class Limits:
    """The token buckets every request passes: one set per application, whichever way the
    request is served (the middleware below, or api/fast_reads.py)."""

    def __init__(self, rt: "Runtime") -> None:
        s = rt.settings
        self.credentials = TokenBuckets(s.rate_limit_per_second, s.rate_limit_burst)
        """per credential: an API key; a JWT's organization and subject (Principal.limit_key)"""
        self.orgs = TokenBuckets(s.org_rate_limit_per_second, s.org_rate_limit_burst)
        """per organization: all its credentials together, so more keys are not more requests"""
        self.addresses = TokenBuckets(s.address_rate_limit_per_second, s.address_rate_limit_burst)


ADMITTED = "admission"
"""the key in a request's ASGI state of its `Admission`, when it was admitted before the
middleware (api/fast_reads.py hands on a request it took in but does not serve)"""


@dataclass(slots=True)
class Admission:
    """What the request's admission found (its principal is in the ASGI state)."""

    address: str
    failed: bool
    """credentials were presented and refused"""
    refusal: tuple[float, str] | None = None
    """(seconds to wait, why): over a rate limit, to be answered 429"""


class Identity:
    def __init__(self, app: ASGIApp, rt: "Runtime", limits: Limits) -> None:
        self.app = app
        self.rt = rt
        self.buckets = limits.credentials
        self.orgs = limits.orgs
        self.addresses = limits.addresses
        self._placed: TtlLru[tuple[Principal, str], Principal] = TtlLru(10_000, 300)

    def _credential(self, scope: Scope, headers: dict[str, str]) -> tuple[str, str] | None:
        """The credential the request presents, without checking it: (kind, value) with kind
        `internal`, `key`, `jwt`, `ticket` or `metrics` (the scrape token, on /metrics only,
        the one credential checked here); None for an anonymous request."""
        cred = presented(scope, headers)
        if cred is None or cred[0] != "bearer":
            return cred
        bearer = cred[1]
        if scope["path"] in METRICS_PATHS and self._scrape_token_ok(bearer):
            return "metrics", bearer  # Prometheus's scrape token (VMPLANE_METRICS_TOKEN)
        return ("key", bearer) if bearer.startswith("vmp_") else ("jwt", bearer)

    def _vouched(self, cred: tuple[str, str] | None) -> bool:
        """Whether a credential may pass an empty address bucket, known good without a lookup:
        vmplane's own per-process secret, or a key this process has seen authenticate."""
        if cred is None:
            return False
        kind, value = cred
        if kind == "internal":
            return hmac.compare_digest(value.encode(), self.rt.internal_token.encode())
        if kind == "metrics":
            return self._scrape_token_ok(value)
        return kind == "key" and self.rt.tenancy.known_key(value)

    def _from(self, principal: Principal, address: str) -> Principal:
        """`principal` acting from `address` (jobs record where they came from): made once per
        pair while it is in use, not per request (`dataclasses.replace` costs a few µs)."""
        found = self._placed.get((principal, address))
        if found is None:
            found = replace(principal, client_ip=address)
            self._placed.set((principal, address), found)
        return found

    def _scrape_token_ok(self, value: str) -> bool:
        token = self.rt.settings.metrics_token
        return token is not None and hmac.compare_digest(value.encode(), token.get_secret_value().encode())

    async def _resolve(self, scope: Scope, headers: dict[str, str], cred: tuple[str, str] | None) -> Principal | None:
        t = self.rt.tenancy
        if cred is None:
            if self.rt.settings.insecure_no_auth:
                return Principal(DEFAULT_ORG, ADMIN_USER, "admin", Role.OWNER, credential="insecure-no-auth")
            return None
        kind, value = cred
        if kind == "internal":
            if not hmac.compare_digest(value.encode(), self.rt.internal_token.encode()):
                raise Unauthorized("credentials required: send X-API-Key or Authorization: Bearer")
            user_id, _, org_id = headers.get(ACTING_AS_HEADER, "").partition("@")
            credential, team_id, read_only = scopes.parse_header(headers.get(ACTING_SCOPE_HEADER, ""))
            return await scopes.acting(self.rt.store, scopes.Scope(org_id, user_id, credential, team_id, read_only))
        if kind == "metrics":  # checked in _credential
            scope.setdefault("state", {})["metrics_scrape"] = True  # no principal: it reads /metrics, nothing else
            return None
        if kind == "jwt":
            return await t.principal_for_jwt(value)
        if kind == "ticket":
            return await t.principal_for_ws_ticket(value)
        return await t.principal_for_key(value)

    async def admit(self, scope: Scope) -> Admission:
        """Who sends the request (its principal, or None, in the ASGI state; `auth_error` when
        its credentials were refused), and whether the limits let it in: the address's bucket
        before any lookup, then the credential's and the organization's (spent here)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        state = scope.setdefault("state", {})
        cred = self._credential(scope, headers)
        address = client_address(scope)
        open_path = scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIX)
        if not open_path and not self._vouched(cred):
            wait = self.addresses.wait(address)
            if wait > 0:
                return Admission(address, False, (wait, "too many anonymous or failed requests from your address"))
        principal: Principal | None = None
        failed = False
        try:
            principal = await self._resolve(scope, headers, cred)
        except Unauthorized as exc:
            state["auth_error"] = exc.message
            failed = True
        if principal is not None and (cred is None or cred[0] != "internal") and scope.get("client"):
            principal = self._from(principal, scope["client"][0])
        state["principal"] = principal
        if failed:
            self.addresses.spend(address, 2)
            self.rt.tenancy.failed_auths.note(address, scope.get("method", "WS"), scope["path"])
        elif principal is None and not open_path and not state.get("metrics_scrape"):
            self.addresses.spend(address, 1)
        if principal is not None and scope["type"] == "http" and (cred is None or cred[0] != "internal"):
            wait = max(self.buckets.wait(principal.limit_key), self.orgs.wait(principal.org_id))
            if wait > 0:
                why = "rate limit exceeded" if self.buckets.wait(principal.limit_key) else "your organization's rate limit exceeded"
                return Admission(address, failed, (wait, why))
            self.buckets.take(principal.limit_key)
            self.orgs.take(principal.org_id)
        return Admission(address, failed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith(AGENT_PATHS):
            # node agents authenticate with their own credentials (api/native/agents.py), are
            # not rate-limited as users, and their heartbeats are not audited
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        admission: Admission = state.pop(ADMITTED, None) or await self.admit(scope)
        if admission.refusal is not None:
            return await self.too_many(scope, receive, send, *admission.refusal)
        principal: Principal | None = state["principal"]
        failed, address = admission.failed, admission.address
        if scope["type"] == "websocket":
            offered = offered_subprotocols(scope)
            if any(p.startswith(SUBPROTOCOL_PREFIXES) for p in offered):
                scope = {**scope, "subprotocols": [p for p in offered if not p.startswith(SUBPROTOCOL_PREFIXES)]}
                if SUBPROTOCOL in offered:
                    send = _answer_subprotocol(send)
            return await self.app(scope, receive, send)
        if principal is None:
            # refused for want of (valid) credentials: counted, not a row per request
            watch = StatusWatch(send)
            await self.app(scope, receive, watch)
            if watch.status == 401 and not failed:
                self.rt.tenancy.failed_auths.note(address, scope["method"], scope["path"])
            return
        if scope["method"] not in MUTATIONS:
            return await self.app(scope, receive, send)
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            await self._audit(scope, principal, watch.status)

    async def too_many(self, scope: Scope, receive: Receive, send: Send, wait: float, why: str) -> None:
        """429 in the shape of the face the path belongs to (on its own listener too), with
        `Retry-After` in whole seconds, rounded up (as RateLimited's)."""
        exc = RateLimited(f"{why}; retry in {wait:.1f} s", retry_after=wait)
        await refuse(scope, receive, send, 429, exc.message, "rate_limited", headers=retry_after(exc))

    async def _audit(self, scope: Scope, who: Principal, status: int) -> None:
        client = scope.get("client")
        row = {
            "ts": clock.now(),
            "org_id": who.org_id,
            "actor": who.user_name,
            "credential": who.credential,
            "method": scope["method"],
            "route": route_template(scope),
            "path": scope["path"][:1000],
            "status": status,
            "outcome": "success" if status < 400 else ("denied" if status in (401, 403, 429) else "failed"),
            "remote": f"{client[0]}:{client[1]}" if client else None,
            "creator_user": who.creator_user,
            "creator_key": who.creator_key,
        }
        async with self.rt.store.write() as conn:
            await t_q.add_audit(conn, [row])


def _answer_subprotocol(send: Send) -> Send:
    """A WebSocket that offered vmplane's subprotocols is accepted with `vmplane` (never the
    one carrying the credential), as browsers require an offered subprotocol be chosen."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": SUBPROTOCOL}
        await send(message)

    return wrapped
