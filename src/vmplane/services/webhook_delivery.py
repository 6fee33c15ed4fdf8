"""Webhook delivery from an outbox: at least once, signed, retried with backoff and jitter.

The dispatcher tails the event log from a cursor kept in the store and, in one transaction,
turns each event into a delivery row per matching webhook and advances the cursor — so a
crash can repeat work but never lose it. Workers claim due deliveries under a lease and POST
them concurrently; a dead receiver only ever delays its own deliveries.

Each request carries `X-Vmplane-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.body")>`,
`X-Vmplane-Delivery` (an id to de-duplicate on) and `X-Vmplane-Event`. Requests go through the
outbound policy (outbound.py), checked again at each delivery; redirects are not followed, the
receiver's answer is not read past its status, and a webhook's own headers never replace
`Host`, the body's framing, vmplane's own headers or a hop-by-hop header.

A webhook gets the events the credential that made it could see (its organization's; a
team-scoped key's, its team's: `event_types.sees`); one whose credential ended (revoked, expired,
its user gone) is disabled at the next dispatch, saying why, and what was queued for it is
not sent (scopes.py): the credential's scope is a service's rule, which is why delivery
lives among the services rather than in events/.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import __version__, clock, ids, outbound
from ..aio import wait_event
from ..event_types import Event, matches, sees
from ..events import formats, wire
from ..store import Store
from ..store import events as ev_q
from ..store import meta as meta_q
from ..store import webhooks as wh_q
from . import scopes

log = logging.getLogger("vmplane.webhooks")
CURSOR_KEY = "webhooks_cursor"
_DISPATCH_LOCK = 7_420_003


RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "host", "user-agent", "x-vmplane-event", "x-vmplane-delivery", "x-vmplane-signature",
    # hop-by-hop and framing: a receiver or a proxy on the way would act on them
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "expect",
})  # fmt: skip
"""Headers a webhook's own `headers` may not set (refused when given, dropped if stored)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, ±20 % jitter."""
    delay: float = min(cap, base * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.8, 1.2)


async def post(client: httpx.AsyncClient, hook: formats.AdHocHook, delivery_id: str, event_type: str, body: bytes) -> tuple[int | None, str | None, int]:
    """One attempt: (status code or None, error or None, duration ms). `client` is an
    outbound client (it checks the URL's address now); the answer's body is not read."""
    own = {k: v for k, v in (hook.headers or {}).items() if k.lower() not in RESERVED_HEADERS}
    headers = {
        **own,
        "Content-Type": "application/json",
        "User-Agent": formats.user_agent(hook.format) or f"vmplane-webhooks/{__version__}",
        "X-Vmplane-Event": event_type,
        "X-Vmplane-Delivery": delivery_id,
        "X-Vmplane-Signature": sign(hook.secret, int(time.time()), body),
    }
    start = time.monotonic()
    try:
        async with asyncio.timeout(hook.timeout_sec + 1):  # the whole attempt, however slowly the receiver answers
            async with outbound.opened(client, "POST", hook.url, headers=headers, content=body, redirects=0, timeout=hook.timeout_sec) as r:
                status = r.status_code
    except outbound.Refused as exc:
        return None, f"refused: {exc.message}", int((time.monotonic() - start) * 1000)
    except TimeoutError:
        return None, f"no answer within {hook.timeout_sec:g} s", int((time.monotonic() - start) * 1000)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {outbound.describe(exc)}"[:500], int((time.monotonic() - start) * 1000)
    ms = int((time.monotonic() - start) * 1000)
    if 200 <= status < 300:
        return status, None, ms
    return status, f"HTTP {status}", ms


class WebhookDelivery:
    def __init__(
        self, store: Store, policy: outbound.Outbound, *, owner: str, signing: Callable[[Row[Any]], formats.AdHocHook], concurrency: int = 16,
        backoff_base: float = 1.0, backoff_cap: float = 300.0, lease_seconds: float = 60.0,
    ) -> None:  # fmt: skip
        """`signing(row)`: the webhook as `post` takes it, its secret unsealed (WebhookService.signing);
        `policy`: the outbound policy every delivery goes through."""
        self.store = store
        self.outbound = policy
        self._signing = signing
        self.owner = owner
        self.concurrency = concurrency
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lease_seconds = lease_seconds
        self.outcomes: dict[str, int] = {"succeeded": 0, "failed": 0, "retried": 0}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        # the cursor of a new store is where the log stands now: set lazily, at the first
        # dispatch, it would skip the events written before it (the one that woke it included)
        async with self.store.write() as conn:
            await meta_q.ensure(conn, CURSOR_KEY, str(await ev_q.last_seq(conn)))
        self._client = self.outbound.client()
        self.store.on_events.append(self.poke)
        self._tasks = [asyncio.create_task(self._run(), name="webhooks")]

    async def stop(self) -> None:
        if self.poke in self.store.on_events:
            self.store.on_events.remove(self.poke)
        for t in self._tasks + list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, 1.0)
            self._wake.clear()
            try:
                await self.dispatch()
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery loop failed")
                await asyncio.sleep(1)

    async def dispatch(self) -> None:
        """Turn new events into deliveries for the webhooks that want them."""
        while True:
            async with self.store.write() as conn:
                if self.store.dialect == "postgresql":  # one dispatcher at a time across replicas
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DISPATCH_LOCK})
                cursor = int(await meta_q.ensure(conn, CURSOR_KEY, str(await ev_q.last_seq(conn))))
                rows = await ev_q.after(conn, cursor, limit=500)
                if not rows:
                    return
                hooks = await wh_q.list_webhooks(conn, enabled_only=True)
                now = clock.now()
                verdicts: dict[scopes.Scope, str | None] = {}  # one check per credential, not per hook
                ended = [h for h in hooks if await self._disable_if_ended(conn, h, now, verdicts)]
                hooks = [h for h in hooks if h not in ended]
                out = []
                for r in rows:
                    if r.type.startswith("webhook."):  # never announce deliveries by delivering
                        continue
                    event = Event(r.seq, r.type, r.ts, r.resource, r.data, r.org_id, r.team_id)
                    rendered: dict[str, bytes | None] = {}  # by format: each event is written once per format
                    for hook in hooks:
                        # the events the hook's credential could see: its organization's, and
                        # of a team-scoped key's hook its team's only
                        if sees(hook.org_id, hook.team_id, event) and r.ts >= hook.created_at and matches(tuple(hook.events), r.type):
                            fmt = hook.format or formats.VMPLANE
                            if fmt not in rendered:
                                rendered[fmt] = wire.to_json(event) if fmt == formats.VMPLANE else await formats.render(conn, event, fmt)
                            body = rendered[fmt]
                            if body is None:  # the format has nothing to say about this event
                                continue
                            out.append(
                                {"id": ids.new_id("dlv"), "webhook_id": hook.id, "event_seq": r.seq, "event_type": r.type,
                                 "resource": r.resource, "payload": body.decode(), "status": "pending", "attempts": 0,
                                 "next_attempt_at": now, "created_at": now, "updated_at": now}  # fmt: skip
                            )
                await wh_q.enqueue(conn, out)
                await meta_q.put(conn, CURSOR_KEY, str(rows[-1].seq))
            if len(rows) < 500:
                return

    @staticmethod
    async def _disable_if_ended(conn: AsyncConnection, hook: Row[Any], now: float, verdicts: dict[scopes.Scope, str | None]) -> bool:
        """Disable (saying why) a hook whose credential may no longer act: True if so.
        `verdicts`: the answers already found for each scope in this pass."""
        scope = scopes.of_row(hook)
        if scope not in verdicts:
            verdicts[scope] = await scopes.why_ended(conn, scope, now)
        why = verdicts[scope]
        if why is None:
            return False
        await scopes.disable(conn, "webhook", hook, why)
        return True

    async def deliver_due(self) -> None:
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return
        now = clock.now()
        async with self.store.write() as conn:
            due = await wh_q.claim_due(
                conn, owner=self.owner, now=now, lease_until=now + self.lease_seconds, limit=free,
                postgres=self.store.dialect == "postgresql",
            )  # fmt: skip
            hooks = {h.id: h for h in await wh_q.list_webhooks(conn)}
        for d in due:
            task = asyncio.create_task(self._deliver(d, hooks.get(d.webhook_id)))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _deliver(self, d: Row[Any], hook: Row[Any] | None) -> None:
        assert self._client is not None
        if hook is None:
            return  # the webhook was deleted with its deliveries
        if hook.disabled_reason is not None:  # its credential ended after this was queued: nothing is sent
            async with self.store.write() as conn:
                await wh_q.record_attempt(
                    conn, d.id, self.owner, status="failed", last_error=f"not sent: the webhook is disabled because {hook.disabled_reason}",
                    updated_at=clock.now(),
                )  # fmt: skip
            return
        status, error, _ms = await post(self._client, self._signing(hook), d.id, d.event_type, d.payload.encode())
        attempts = d.attempts + 1
        now = clock.now()
        values: dict[str, Any] = {"attempts": attempts, "last_status_code": status, "last_error": error, "updated_at": now}
        event: tuple[str, dict[str, Any]] | None = None
        if error is None:
            values.update(status="succeeded", delivered_at=now)
            self.outcomes["succeeded"] += 1
            event = ("webhook.delivered", {"webhookId": hook.id, "deliveryId": d.id, "eventId": d.event_seq, "attempts": attempts})
        elif attempts > hook.retry_count:
            values.update(status="failed")
            self.outcomes["failed"] += 1
            event = ("webhook.failed", {"webhookId": hook.id, "deliveryId": d.id, "eventId": d.event_seq, "attempts": attempts, "error": error})
        else:
            values.update(status="pending", next_attempt_at=now + backoff(attempts, self.backoff_base, self.backoff_cap))
            self.outcomes["retried"] += 1
        async with self.store.write() as conn:
            if await wh_q.record_attempt(conn, d.id, self.owner, **values) and event is not None:
                await ev_q.emit(conn, event[0], hook.id, event[1], hook.org_id, hook.team_id)
        if values["status"] == "pending":
            asyncio.get_running_loop().call_later(max(0.0, values["next_attempt_at"] - clock.now()) + 0.01, self.poke)
        else:  # the next delivery of this resource, held back until this one ended, is due now
            self.poke()


def test_payload(hook_id: str) -> bytes:
    return json.dumps(
        {"id": 0, "type": "webhook.test", "time": clock.rfc3339_ms(clock.now()), "resource": hook_id, "data": {"message": "test delivery from vmplane"}},
        separators=(",", ":"),
    ).encode()
