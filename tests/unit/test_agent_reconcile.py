"""A node's reconciliation, when its agent comes back, is tried again while it fails: a restarted
agent answers before it has joined again ("this node has not joined a control plane yet"), and
a node reconciled only once kept its VMs `unknown` (found by the chaos soak, bench/chaos.py)."""

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from vmplane.errors import Unauthorized
from vmplane.services.agents import AgentService


def reconciling_with(reconcile: Callable[[list[Any]], Awaitable[None]], monkeypatch: pytest.MonkeyPatch) -> AgentService:
    """An agent service that reconciles through `reconcile` (its node's driver is a name), trying again at once."""

    async def nothing() -> None:
        return None

    monkeypatch.setattr(AgentService, "RECONCILE_RETRY_SECONDS", 0.0)
    return AgentService(
        store=None, settings=None, registry=SimpleNamespace(driver=lambda node_id: f"driver of {node_id}"),  # type: ignore[arg-type]
        capacity=None, secret_box=None, reconcile=reconcile, register_tiny_template=nothing,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_a_reconciliation_the_agent_refuses_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[Any]] = []

    async def reconcile(nodes: list[Any]) -> None:
        asked.append(nodes)
        if len(asked) < 3:
            raise Unauthorized("this node has not joined a control plane yet")

    service = reconciling_with(reconcile, monkeypatch)
    service._reconcile_soon("node-back")
    await service._reconciling["node-back"]
    assert asked == [[("node-back", "driver of node-back")]] * 3


async def test_a_reconciliation_that_keeps_failing_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = 0

    async def reconcile(nodes: list[Any]) -> None:
        nonlocal tries
        tries += 1
        raise Unauthorized("this node has not joined a control plane yet")

    service = reconciling_with(reconcile, monkeypatch)
    service._reconcile_soon("node-gone")
    await service._reconciling["node-gone"]
    assert tries == AgentService.RECONCILE_TRIES
