"""Fencing: a run of a task acts on hypervisors only while it still holds its task's lease.

A worker that stalls past its lease (a long GC pause, a stopped process, a hung disk) may find
on waking that another worker, or a later attempt of its own process, has taken its task over.
Every driver a handler gets from the node registry while it runs is a `FencedDriver`: before
each call that changes something on a node it awaits the run's `fence()`, which answers from
what the lease renewals keep in memory while the lease is surely still held, and otherwise
asks the store whether (task, owner, attempt, running) still holds. A run that lost its lease
gets `LeaseLost` instead of the call.

The run is found through a context variable the engine sets in the task's asyncio task, so
every path to a driver (handlers, the helpers and services they call, tasks they spawn) is
fenced without passing anything along.

A call the fence let through just before a stall can still land after it: on a node of this
host the window is one call, but a node agent's request can sit in a slow network for as long
as the network holds it. So each changing call also carries its order (`drivers.base.CallOrder`:
the task's seq, the run's attempt, the call's number in the run) for a driver to hand on: the
node agent refuses a call older than one it already took on the same resource, and the run
that made it stops as one that lost its lease.
"""

import functools
import inspect
from contextvars import ContextVar
from typing import Any, Protocol, cast

from ..drivers.base import CallOrder, HypervisorDriver, call_order
from ..errors import Superseded


class LeaseLost(BaseException):
    """This run of a task no longer holds its lease: another worker or a later attempt owns
    the task now. A BaseException, as cancellation is, so that a handler's `except Exception`
    clean-up neither swallows it nor acts on the node on the way out."""


class Fence(Protocol):
    async def fence(self) -> None:
        """Return if the run still holds its task's lease; raise LeaseLost if not."""

    def next_call(self) -> CallOrder:
        """The order of the run's next changing call (each call's is greater than the last's)."""


current: ContextVar[Fence | None] = ContextVar("vmplane_task_fence", default=None)
"""The run of a task the current asyncio task works for (None outside job handlers)."""

READS = frozenset({"open", "close", "node_info", "get_vm", "list_vms", "console_log", "stats_vm", "open_console", "guest_state", "open_vnc", "screenshot"})
"""Driver calls that change nothing on the node: not fenced. Every other coroutine method is
(so a call added to the driver interface later is fenced until it is listed here)."""


class FencedDriver:
    """A node's driver as a task's run sees it: changing calls first await the run's fence."""

    def __init__(self, driver: HypervisorDriver, fence: Fence) -> None:
        self._driver = driver
        self._fence = fence

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._driver, name)
        if name in READS or not inspect.iscoroutinefunction(attr):
            return attr
        fence = self._fence

        @functools.wraps(attr)
        async def fenced_call(*args: Any, **kwargs: Any) -> Any:
            await fence.fence()
            token = call_order.set(fence.next_call())
            try:
                return await attr(*args, **kwargs)
            except Superseded as exc:
                raise LeaseLost(f"the node refused a stale call: {exc.message}") from exc
            finally:
                call_order.reset(token)

        return fenced_call

    def __repr__(self) -> str:
        return f"FencedDriver({self._driver!r})"


def fenced(driver: HypervisorDriver) -> HypervisorDriver:
    """`driver` as the current run of a task may use it (itself outside job handlers)."""
    fence = current.get()
    return driver if fence is None else cast(HypervisorDriver, FencedDriver(driver, fence))
