"""Loops stopped by cancel stop when told, even if they were woken at the same moment.

Python 3.11's `asyncio.wait_for` returns the inner result and drops the cancel when the inner
awaitable finishes in the same turn of the event loop as the cancel arrives (python/cpython#86296,
fixed in 3.12 by rebuilding wait_for on `asyncio.timeout`). A loop that waited that way for its
wake-up event went round again after `stop()` had cancelled it, and `stop()` never returned:
a poke, then a stop, with no await between, is the race every time. The loops now wait with
`vmplane.aio.wait_event`."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmplane.aio import wait_event
from vmplane.config import Settings
from vmplane.events.bus import EventBus
from vmplane.outbound import Outbound
from vmplane.services.webhook_delivery import WebhookDelivery
from vmplane.store import Store

PROMPTLY = 3.0
"""seconds: a stop that takes longer has hung"""
ROUNDS = 20


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'vmplane.db'}")
    await store.open()
    yield store
    await store.close()


async def settle() -> None:
    """Let a freshly started loop reach its wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_wait_event_says_whether_it_was_woken() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, PROMPTLY) is True
    assert await wait_event(event, None) is True  # already set: no wait at all


async def test_a_cancel_that_lands_with_the_wakeup_is_not_lost() -> None:
    for _ in range(ROUNDS):
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_event(event, 30))
        await settle()
        event.set()
        waiter.cancel()  # the same turn as the wake-up
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(PROMPTLY):
                await waiter
        assert waiter.cancelled()


async def test_event_bus_stops_right_after_a_poke(store: Store) -> None:
    bus = EventBus(store, poll_seconds=30)
    for _ in range(ROUNDS):
        await bus.start()
        await settle()
        bus.poke()
        async with asyncio.timeout(PROMPTLY):
            await bus.stop()


async def test_webhook_delivery_stops_right_after_a_poke(store: Store, tmp_path: Path) -> None:
    delivery = WebhookDelivery(store, Outbound(Settings(data_dir=tmp_path)), owner="test", signing=lambda row: pytest.fail("no webhooks"))
    for _ in range(ROUNDS):
        await delivery.start()
        await settle()
        delivery.poke()
        async with asyncio.timeout(PROMPTLY):
            await delivery.stop()

