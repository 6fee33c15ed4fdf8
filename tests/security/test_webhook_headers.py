"""A webhook's header values are write-only, as its secret is: a tenant's `Authorization`
token for its receiver is delivered but never read back — not in the create answer, a get,
a list or an update, on the native API or the HyperSDK face. Writing back what was read
(`***`) keeps the stored value."""

import asyncio
import time
from typing import Any

from ..api.test_webhooks import Receiver
from ..support import LOOPBACK_ALLOW

TOKEN = "Bearer s3cret-token-9f2c"
P = "/compat/hypersdk"


async def delivered(rcv: Receiver, n: int) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while len(rcv.requests) < n:
        assert time.monotonic() < deadline, "no delivery"
        await asyncio.sleep(0.05)
    return rcv.requests[n - 1][0]


async def test_native_webhook_header_values_are_never_read_back(server_factory: Any) -> None:
    server = await server_factory(outbound_allow=LOOPBACK_ALLOW)
    c = server.client
    rcv = Receiver([])
    try:
        r = await c.post("/api/v1/webhooks", json={"url": rcv.url, "events": ["job.*"], "headers": {"Authorization": TOKEN, "X-Team": "blue"}})
        assert r.status_code == 201, r.text
        hook = r.json()
        reads = [r, await c.get(f"/api/v1/webhooks/{hook['id']}"), await c.get("/api/v1/webhooks")]
        for read in reads:
            assert TOKEN not in read.text and "blue" not in read.text, read.text
        assert hook["headers"] == reads[1].json()["headers"] == reads[2].json()["items"][0]["headers"] == {"Authorization": "***", "X-Team": "***"}

        # deliveries still carry the values
        assert (await c.post(f"/api/v1/webhooks/{hook['id']}/test")).json()["ok"] is True
        sent = await delivered(rcv, 1)
        assert sent["authorization"] == TOKEN and sent["x-team"] == "blue"

        # writing back what was read keeps the value; a new header is taken; the answer shows names only
        r = await c.patch(f"/api/v1/webhooks/{hook['id']}", json={"headers": {"authorization": "***", "X-New": "n-value"}})
        assert r.status_code == 200 and r.json()["headers"] == {"authorization": "***", "X-New": "***"}
        assert TOKEN not in r.text and "n-value" not in r.text
        assert (await c.post(f"/api/v1/webhooks/{hook['id']}/test")).json()["ok"] is True
        sent = await delivered(rcv, 2)
        assert sent["authorization"] == TOKEN and sent["x-new"] == "n-value" and "x-team" not in sent

        # "***" for a header the webhook does not have is refused, naming the field, and changes nothing
        r = await c.patch(f"/api/v1/webhooks/{hook['id']}", json={"headers": {"X-Other": "***"}})
        assert r.status_code == 400 and r.json()["details"]["field"] == "headers"
        assert (await c.get(f"/api/v1/webhooks/{hook['id']}")).json()["headers"] == {"authorization": "***", "X-New": "***"}
    finally:
        rcv.httpd.shutdown()


async def test_hypersdk_webhook_header_values_are_never_read_back(server_factory: Any) -> None:
    server = await server_factory(outbound_allow=LOOPBACK_ALLOW)
    c = server.client
    rcv = Receiver([])
    try:
        r = await c.post(f"{P}/webhooks", json={"url": rcv.url, "events": ["job.completed"], "timeout": 30, "retry_count": 3, "headers": {"Authorization": TOKEN}})
        assert r.status_code == 201, r.text
        listing = await c.get(f"{P}/webhooks")
        native = await c.get("/api/v1/webhooks")
        for read in (r, listing, native):
            assert TOKEN not in read.text, read.text
        assert r.json()["webhook"]["headers"] == listing.json()["webhooks"][0]["headers"] == {"Authorization": "***"}
        # the document's list fields are all there
        assert {"url", "events", "enabled", "timeout", "retry_count"} <= set(listing.json()["webhooks"][0])
        hook_id = native.json()["items"][0]["id"]
        assert (await c.post(f"/api/v1/webhooks/{hook_id}/test")).json()["ok"] is True
        assert (await delivered(rcv, 1))["authorization"] == TOKEN
    finally:
        rcv.httpd.shutdown()
