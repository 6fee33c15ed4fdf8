"""Loops stopped by cancel stop when told, even if they were woken at the same moment.

Python 3.11's `asyncio.wait_for` returns the inner result and drops the cancel when the inner
awaitable finishes in the same turn of the loop as the cancel arrives (gh-86296, fixed in 3.12
by rebuilding wait_for on `asyncio.timeout`). A loop that waited that way for its wake-up event
went round again after `stop()` had cancelled it, and `stop()` never returned: poke, then stop,
with no await between, is the race every time."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmplane.events.bus import EventBus
from vmplane.store import Store

PROMPTLY = 3.0
"""seconds: a stop that takes longer has hung"""


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


async def test_event_bus_stops_right_after_a_poke(store: Store) -> None:
    bus = EventBus(store, poll_seconds=30)
    for _ in range(20):
        await bus.start()
        await settle()
        bus.poke()
        async with asyncio.timeout(PROMPTLY):
            await bus.stop()
