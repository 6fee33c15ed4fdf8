"""Webhooks: where events are POSTed. Validation and CRUD; delivery is webhook_delivery.py.
A webhook receives the events the credential that made it could see (its organization's; a
team-scoped key's, its team's only) and is disabled, saying why, when that credential ends
(services/scopes.py).
A webhook's URL must pass the outbound policy (outbound.py) when it is set; every delivery,
test deliveries included, checks it again.
The values of a webhook's `headers` are write-only, as its secret is: they often carry a
receiver's credentials (`Authorization`), so every read shows the names with `***`
(`redacted_headers`), deliveries send the values, and an update that gives `***` for a
header the webhook has keeps its value (a client may write back what it read)."""

from __future__ import annotations

import builtins
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sqlalchemy import Row

from .. import clock, ids
from ..auth import Principal
from ..errors import Conflict, InvalidRequest, NotFound
from ..event_types import check_patterns
from ..events import formats
from ..store import webhooks as wh_q
from . import pages, scopes
from .secrets import SecretBox
from .webhook_delivery import RESERVED_HEADERS, post, test_payload

if TYPE_CHECKING:
    from ..outbound import Outbound
    from ..store import Store
    from .tenancy import TenancyService


HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequest("url must be an http:// or https:// URL with a host", field="url")


def check_events(events: list[str]) -> tuple[str, ...]:
    if not events:
        raise InvalidRequest("events must list at least one type or pattern (e.g. 'job.*')", field="events")
    try:
        return check_patterns(events)
    except ValueError as exc:
        raise InvalidRequest(f"events: {exc}", field="events") from None


def check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if not HEADER_NAME_RE.match(name) or name.lower() in RESERVED_HEADERS:
            raise InvalidRequest(f"headers: {name!r} is not a header name you may set", field="headers")
        if "\r" in value or "\n" in value or len(value) > 4096:
            raise InvalidRequest(f"headers: the value of {name!r} must be one line under 4 KiB", field="headers")


REDACTED = "***"
"""what every read shows for a webhook header's value"""


def redacted_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A webhook's headers as reads show them: each name, its value `***`."""
    return {name: REDACTED for name in headers or {}}


def kept_headers(new: dict[str, str], current: Mapping[str, str] | None) -> dict[str, str]:
    """`new` with each `***` value replaced by the value the webhook has for that header (names
    compare case-insensitively); 400 naming `headers` for a `***` the webhook has no value for."""
    stored = {name.lower(): value for name, value in (current or {}).items()}
    out = {}
    for name, value in new.items():
        if value == REDACTED:
            if name.lower() not in stored:
                raise InvalidRequest(f"headers: {name!r} is {REDACTED!r} (a redacted value) but the webhook has no such header to keep", field="headers")
            value = stored[name.lower()]
        out[name] = value
    return out


def seal_secret(box: SecretBox, secret: str) -> str:
    return box.seal({"webhookSecret": secret})


def unseal_secret(box: SecretBox, stored: str) -> str:
    """`stored` unsealed; a secret kept in clear (a store migrated without the data dir's
    key, see migration 0018) is returned as it is."""
    if stored.startswith("whsec_"):
        return stored
    return str(box.open(stored)["webhookSecret"])


def _visible(row: Row[Any], who: Principal) -> bool:
    """A webhook is its organization's, and a team-scoped credential's only if made with that
    team's scope."""
    return row.org_id == who.org_id and (who.team_id is None or row.team_id == who.team_id)


class WebhookService:
    """Webhooks of organizations. Signing secrets are stored sealed with the data dir's key
    (services/secrets.py, as vCenter credentials are): the database alone does not give them."""

    def __init__(self, *, store: Store, outbound: Outbound, secret_box: SecretBox, tenancy: TenancyService) -> None:
        self.store = store
        self.outbound = outbound
        self.secret_box = secret_box
        self.tenancy = tenancy

    def secret_of(self, row: Row[Any]) -> str:
        """The signing secret of a stored webhook, in clear."""
        return unseal_secret(self.secret_box, row.secret)

    def signing(self, row: Row[Any]) -> formats.AdHocHook:
        """What a delivery to `row` needs (its secret in clear), for `webhook_delivery.post`."""
        return formats.AdHocHook(
            url=row.url, headers=dict(row.headers or {}), timeout_sec=row.timeout_sec, format=row.format or formats.VMPLANE,
            secret=self.secret_of(row), id=row.id,
        )  # fmt: skip

    async def get(self, webhook_id: str, who: Principal) -> Row[Any]:
        async with self.store.read() as conn:
            row = await wh_q.get_webhook(conn, webhook_id)
        if row is None or not _visible(row, who):
            raise NotFound(f"webhook {webhook_id} does not exist")
        return row

    async def list(self, who: Principal) -> Sequence[Row[Any]]:
        async with self.store.read() as conn:
            return [h for h in await wh_q.list_webhooks(conn) if _visible(h, who)]

    async def create(
        self, *, url: str, events: builtins.list[str], enabled: bool, timeout_sec: float, retry_count: int, headers: dict[str, str], who: Principal,
        format: str = formats.VMPLANE,
    ) -> Row[Any]:
        """`format`: how its deliveries are written (events/formats.py)."""
        check_url(url)
        patterns = check_events(events)
        check_headers(headers)
        if format not in formats.FORMATS:
            raise InvalidRequest(f"format must be one of {', '.join(formats.FORMATS)}", field="format")
        await self.outbound.check(url, "url")  # last: the syntax is checked before any lookup
        now = clock.now()
        row = {
            "id": ids.new_id("whk"), "org_id": who.org_id, "url": url, "events": list(patterns), "enabled": enabled, "timeout_sec": timeout_sec,
            "retry_count": retry_count, "headers": headers, "secret": seal_secret(self.secret_box, "whsec_" + secrets.token_urlsafe(32)),
            "created_by": who.user_name, "created_at": now, "updated_at": now, "format": format, **scopes.of(who).columns(),
        }  # fmt: skip
        async with self.store.write() as conn:
            await self.tenancy.reserve(conn, who.org_id, webhooks=1)
            await wh_q.insert_webhook(conn, row)
        return await self.get(row["id"], who)

    async def update(self, webhook_id: str, who: Principal, **changes: Any) -> Row[Any]:
        current = await self.get(webhook_id, who)
        values = {k: v for k, v in changes.items() if v is not None}
        if not values:
            raise InvalidRequest("give at least one field to change", field="body")
        if values.get("enabled") and current.disabled_reason is not None:
            raise Conflict(f"webhook {webhook_id} was disabled because {current.disabled_reason}; make a new one", field="enabled")
        if "url" in values:
            check_url(values["url"])
        if "events" in values:
            values["events"] = list(check_events(values["events"]))
        if "headers" in values:
            check_headers(values["headers"])
            values["headers"] = kept_headers(values["headers"], current.headers)
        if "url" in values:
            await self.outbound.check(values["url"], "url")
        async with self.store.write() as conn:
            await wh_q.set_webhook(conn, webhook_id, **values, updated_at=clock.now())
        return await self.get(webhook_id, who)

    async def delete(self, webhook_id: str, who: Principal) -> None:
        await self.get(webhook_id, who)
        async with self.store.write() as conn:
            await wh_q.delete_webhook(conn, webhook_id)

    async def test(self, webhook_id: str, who: Principal) -> dict[str, Any]:
        """Send one signed test event now (no retries) and say how it went."""
        hook = await self.get(webhook_id, who)
        async with self.outbound.client() as client:
            body = test_payload(hook.id) if hook.format == formats.VMPLANE else formats.test_body(hook.format, "webhook.test", hook.id, who.org_id)
            status, error, ms = await post(client, self.signing(hook), ids.new_id("dlv"), "webhook.test", body)
        return {"ok": error is None, "statusCode": status, "error": error, "durationMs": ms, "sentAt": clock.rfc3339(time.time())}

    async def test_url(self, *, url: str, fmt: str, event: str, headers: dict[str, str], timeout_sec: float, who: Principal) -> dict[str, Any]:
        """Send one test event to a URL no webhook is registered for (no retries), written in
        format `fmt`, and say how it went."""
        check_url(url)
        check_headers(headers)
        if not EVENT_NAME_RE.match(event):
            raise InvalidRequest("event must be 1-64 letters, digits, '.', '_' or '-'", field="event")
        if fmt not in formats.FORMATS:
            raise InvalidRequest(f"format must be one of {', '.join(formats.FORMATS)}", field="format")
        await self.outbound.check(url, "url")
        hook = formats.AdHocHook(url=url, headers=headers, timeout_sec=timeout_sec, format=fmt, secret="whsec_test", id="test")
        body = formats.test_body(fmt, event, hook.id, who.org_id)
        async with self.outbound.client() as client:
            status, error, ms = await post(client, hook, ids.new_id("dlv"), event, body)
        return {"ok": error is None, "statusCode": status, "error": error, "durationMs": ms, "sentAt": clock.rfc3339(time.time())}

    async def deliveries(self, webhook_id: str, who: Principal, *, limit: int, page_token: str | None) -> tuple[Sequence[Row[Any]], str | None]:
        await self.get(webhook_id, who)
        after = pages.decode("deliveries", page_token)
        async with self.store.read() as conn:
            rows = await wh_q.deliveries(conn, webhook_id, after_seq=after, limit=limit + 1)
        token = pages.encode("deliveries", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token
