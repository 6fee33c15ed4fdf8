"""Waiting, in a loop that is stopped by cancel, for a wake-up or a timeout.

Python 3.11's `asyncio.wait_for` runs what it waits on as a task of its own, and when that task
finishes in the same turn of the event loop as a cancel reaches the waiter, it returns the result
and drops the cancel (python/cpython#86296; 3.12 rebuilt wait_for on `asyncio.timeout`). A loop
that waited so for its wake-up event went round again after `stop()` had cancelled it, and
`stop()` never returned: a poke followed at once by a stop was that race every time.
`asyncio.timeout` waits in the caller's own task, so a cancel is raised there and nowhere else.
Wait for an event here; for anything else with a deadline, `async with asyncio.timeout(...)`.
"""

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Until `event` is set (True) or `timeout` seconds have passed (False); a cancel of the
    caller always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
