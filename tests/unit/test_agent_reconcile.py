"""A node's reconciliation, when its agent comes back, is tried again while it fails: a restarted
agent answers before it has joined again ("this node has not joined a control plane yet"), and
a node reconciled only once kept its VMs `unknown` (found by the chaos soak, bench/chaos.py)."""

from types import SimpleNamespace
from typing import Any

import pytest

from vmplane.errors import Unauthorized
from vmplane.services.agents import AgentService


async def test_a_reconciliation_the_agent_refuses_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[Any]] = []

    async def reconcile(nodes: list[Any]) -> None:
        asked.append(nodes)
        if len(asked) < 3:
            raise Unauthorized("this node has not joined a control plane yet")

    async def nothing() -> None:
        return None

    monkeypatch.setattr(AgentService, "RECONCILE_RETRY_SECONDS", 0.0)
    registry = SimpleNamespace(driver=lambda node_id: f"driver of {node_id}")
    service = AgentService(
        store=None, settings=None, registry=registry, capacity=None, secret_box=None,  # type: ignore[arg-type]
        reconcile=reconcile, register_tiny_template=nothing,
    )  # fmt: skip
    service._reconcile_soon("node-back")
    await service._reconciling["node-back"]
    assert asked == [[("node-back", "driver of node-back")]] * 3


async def test_a_reconciliation_that_keeps_failing_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = 0

    async def reconcile(nodes: list[Any]) -> None:
        nonlocal tries
        tries += 1
        raise Unauthorized("this node has not joined a control plane yet")

    async def nothing() -> None:
        return None

    monkeypatch.setattr(AgentService, "RECONCILE_RETRY_SECONDS", 0.0)
    registry = SimpleNamespace(driver=lambda node_id: node_id)
    service = AgentService(
        store=None, settings=None, registry=registry, capacity=None, secret_box=None,  # type: ignore[arg-type]
        reconcile=reconcile, register_tiny_template=nothing,
    )  # fmt: skip
    service._reconcile_soon("node-gone")
    await service._reconciling["node-gone"]
    assert tries == AgentService.RECONCILE_TRIES
