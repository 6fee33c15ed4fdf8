"""A stream resumed on a replica whose bus is behind the client: the client saw, through another
replica, events this bus has not read yet. Nothing is replayed, and those events must not come
again when this bus reads them (found by the chaos soak, bench/chaos.py: a follower resuming
with Last-Event-ID 2483 got 2460-2483 a second time)."""

from pathlib import Path

from vmplane.events.bus import EventBus
from vmplane.store import Store
from vmplane.store import events as ev_q

from ..support import sqlite_with_schema


async def _emit(store: Store, n: int, resource: str) -> int:
    async with store.write() as conn:
        for i in range(n):
            await ev_q.emit(conn, "vm.updated", resource, {"i": i}, None)
    async with store.read() as conn:
        return await ev_q.last_seq(conn)


async def test_a_resume_ahead_of_the_bus_repeats_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{sqlite_with_schema(tmp_path / 'store.db')}"
    mine, other = Store(url), Store(url)  # `other` is another replica's: its commits do not poke this bus
    await mine.open()
    await other.open()
    bus = EventBus(mine, poll_seconds=3600)
    await bus.start()
    try:
        seen_elsewhere = await _emit(other, 5, "vm-a")
        assert bus.delivered_seq < seen_elsewhere  # this bus is behind the client
        async with bus.subscribe() as sub:
            assert [e async for e in bus.history(sub, seen_elsewhere)] == []
            bus.poke()  # the bus reads the five events now
            assert await sub.get(timeout=0.5) is None, "an event the client had was sent again"
            newest = await _emit(mine, 1, "vm-b")
            event = await sub.get(timeout=5)
            assert event is not None and (event.seq, event.resource) == (newest, "vm-b")
            assert sub.ready(10) == []
    finally:
        await bus.stop()
        await mine.close()
        await other.close()
