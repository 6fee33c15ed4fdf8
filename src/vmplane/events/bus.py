"""The event bus: tails the persisted event log and fans events out to subscribers.

Writers never talk to the bus directly: they insert events in their own transaction, and the
store pokes the bus after the commit. The bus reads the log in order, so every subscriber
sees events in commit order; each subscriber has a bounded queue, and one that falls behind
is dropped and told why instead of slowing anyone else.

    async with bus.subscribe(types=("vm.*",)) as sub:
        async for event in sub: ...
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..aio import wait_event
from ..event_types import Event, matches, sees
from ..store import Store
from ..store import events as ev_q

log = logging.getLogger("vmplane.events")


class SlowConsumer(Exception):
    """The subscriber fell too far behind and was dropped."""


class GoingAway(SlowConsumer):
    """The server is shutting down: every subscription ends (a client resumes elsewhere or
    later, with the last event id it saw). A SlowConsumer, so every stream ends on it."""


class Subscription:
    def __init__(
        self,
        bus: "EventBus",
        types: tuple[str, ...] | None,
        resource: str | None,
        max_queue: int,
        org_id: str | None,
        team_id: str | None = None,
    ) -> None:
        self.types = types
        self.resource = resource
        self.org_id = org_id
        self.team_id = team_id
        self.start_seq = bus.delivered_seq
        """Live events delivered to this subscription all have seq > start_seq."""
        self.floor = self.start_seq
        """The subscriber has every event up to here: none at or below it is handed out. It is
        start_seq, or a resume point past it (a client that saw, on another replica, events
        this replica's bus has not read yet: those come live and must not come twice)."""
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_queue)
        self.dropped: str | None = None
        self.going_away = False

    def wants(self, event: Event) -> bool:
        return (
            sees(self.org_id, self.team_id, event)
            and (self.resource is None or event.resource == self.resource)
            and matches(self.types, event.type)
        )

    def offer(self, event: Event) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            self.end(f"slow consumer: more than {self._queue.maxsize} events behind")
            return False

    def end(self, why: str, going_away: bool = False) -> None:
        """End the subscription: its reader gets SlowConsumer (GoingAway) saying `why`."""
        if self.dropped is not None:
            return
        self.dropped, self.going_away = why, going_away
        while not self._queue.empty():  # make room for the end marker
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def _ended(self) -> SlowConsumer:
        return (GoingAway if self.going_away else SlowConsumer)(self.dropped or "dropped")

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout. Raises SlowConsumer once dropped."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # not wait_for, which can drop a cancel (see vmplane/aio.py)
                    event = await self._queue.get()
            except TimeoutError:
                return None
            if event is None:
                raise self._ended()
            if event.seq > self.floor:  # else queued before a resume point past it was known
                return event

    def ready(self, limit: int) -> list[Event]:
        """Events already queued (up to `limit`), without waiting; raises SlowConsumer once dropped."""
        out: list[Event] = []
        while len(out) < limit and not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                raise self._ended()
            if event.seq > self.floor:
                out.append(event)
        return out

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        assert event is not None
        return event


class EventBus:
    def __init__(self, store: Store, *, poll_seconds: float = 1.0, max_queue: int = 10_000) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_queue = max_queue
        self.delivered_seq = 0
        self._subs: set[Subscription] = set()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._going_away: str | None = None

    def go_away(self, why: str = "the server is shutting down") -> None:
        """End every subscription, and every one made from now on, with GoingAway."""
        self._going_away = why
        for sub in list(self._subs):
            sub.end(why, going_away=True)

    async def start(self) -> None:
        async with self.store.read() as conn:
            self.delivered_seq = await ev_q.last_seq(conn)
        self.store.on_events.append(self.poke)
        self._task = asyncio.create_task(self._run(), name="event-bus")

    async def stop(self) -> None:
        if self.poke in self.store.on_events:
            self.store.on_events.remove(self.poke)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def poke(self) -> None:
        self._poke.set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @asynccontextmanager
    async def subscribe(
        self,
        types: tuple[str, ...] | None = None,
        resource: str | None = None,
        max_queue: int | None = None,
        org_id: str | None = None,
        team_id: str | None = None,
    ) -> AsyncIterator[Subscription]:
        """`org_id` limits the subscription to one organization's events (and everyone's);
        `team_id` within it to one team's (a team-scoped credential's streams)."""
        sub = Subscription(self, types, resource, max_queue or self.max_queue, org_id, team_id)
        if self._going_away is not None:
            sub.end(self._going_away, going_away=True)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    async def _run(self) -> None:
        while True:
            await wait_event(self._poke, self.poll_seconds)
            self._poke.clear()
            try:
                await self._deliver_new()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the event log failed")
                await asyncio.sleep(1)

    async def _deliver_new(self) -> None:
        while True:
            async with self.store.read() as conn:
                rows = await ev_q.after(conn, self.delivered_seq, limit=2000)
            if not rows:
                return
            for r in rows:
                event = Event(r.seq, r.type, r.ts, r.resource, r.data, r.org_id, r.team_id)
                for sub in list(self._subs):
                    if sub.dropped is None and event.seq > sub.floor and sub.wants(event):
                        if not sub.offer(event):
                            log.warning("dropped an event subscriber: %s", sub.dropped)
                self.delivered_seq = r.seq
            if len(rows) < 2000:
                return

    async def history(self, sub: Subscription, after_seq: int) -> AsyncIterator[Event]:
        """Stored events in (after_seq, sub.start_seq] matching the filter, oldest first: what
        a subscriber resuming after `after_seq` missed before its live events begin. When the
        subscriber is ahead of this bus (it saw `after_seq` through another replica), there is
        nothing to replay, and the live events up to `after_seq` are not handed out again."""
        sub.floor = max(sub.floor, after_seq)
        seq = after_seq
        while seq < sub.start_seq:
            async with self.store.read() as conn:
                rows = await ev_q.after(conn, seq, until=sub.start_seq, limit=1000)
            if not rows:
                return
            for r in rows:
                seq = r.seq
                event = Event(r.seq, r.type, r.ts, r.resource, r.data, r.org_id, r.team_id)
                if sub.wants(event):
                    yield event
