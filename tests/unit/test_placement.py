"""Placement is a pure function: table tests of its filters, weighers and errors."""

import time

import pytest

from vmplane.errors import NoCapacity, NotFound
from vmplane.placement import Demand, NodeUsage, Policy, choose_node


def node(id: str, cpu_used: int = 0, ram_used: int = 0, disk_used: int = 0, online: bool = True, cpu: int = 32, ram: int = 131072, disk: int = 2000) -> NodeUsage:
    return NodeUsage(id, online, cpu, ram, disk, cpu_used, ram_used, disk_used)


SPREAD = Policy()
PACK = Policy(strategy="pack")


@pytest.mark.parametrize(
    "demand, nodes, policy, expected",
    [
        # spread: the emptiest node wins
        (Demand(1, 512, 10), [node("n1", 10), node("n2", 2), node("n3", 20)], SPREAD, "n2"),
        # pack: the fullest node that still fits wins
        (Demand(1, 512, 10), [node("n1", 10), node("n2", 2), node("n3", 20)], PACK, "n3"),
        # a node that does not fit is skipped even when packing
        (Demand(4, 512, 10), [node("n1", 30), node("n2", 2)], PACK, "n2"),
        # offline nodes are filtered out
        (Demand(1, 512, 10), [node("n1", online=False), node("n2", 30)], SPREAD, "n2"),
        # explicit node
        (Demand(1, 512, 10, node_id="n3"), [node("n1"), node("n2"), node("n3", 31)], SPREAD, "n3"),
        # ties go to the lowest id
        (Demand(1, 512, 10), [node("n2"), node("n1"), node("n3")], SPREAD, "n1"),
        # exactly full is allowed
        (Demand(32, 131072, 2000), [node("n1")], SPREAD, "n1"),
        # overcommit ratio lets a full node take more
        (Demand(8, 512, 10), [node("n1", 32)], Policy(cpu_ratio=1.5), "n1"),
    ],
)
def test_choose_node(demand: Demand, nodes: list[NodeUsage], policy: Policy, expected: str) -> None:
    assert choose_node(demand, nodes, policy).id == expected


@pytest.mark.parametrize(
    "demand, nodes, message",
    [
        (Demand(64, 512, 10), [node("n1"), node("n2", 4)], "no node has 64 free vCPUs"),
        (Demand(1, 200000, 10), [node("n1")], "no node has 200000 MB of free RAM"),
        (Demand(1, 512, 5000), [node("n1")], "no node has 5000 GB of free disk"),
        (Demand(1, 512, 10), [node("n1", online=False)], "no node is online"),
        (Demand(2, 512, 10, node_id="n1"), [node("n1", 31), node("n2")], "node n1 does not have 2 free vCPUs"),
        (Demand(8, 512, 10), [node("n1", 30), node("n2", 0, 131000)], "at once"),
        (Demand(1, 512, 10), [], "no node is online"),
    ],
)
def test_no_capacity_names_what_is_short(demand: Demand, nodes: list[NodeUsage], message: str) -> None:
    with pytest.raises(NoCapacity, match=message):
        choose_node(demand, nodes, SPREAD)


def test_unknown_explicit_node() -> None:
    with pytest.raises(NotFound, match="node nx does not exist"):
        choose_node(Demand(1, 512, 10, node_id="nx"), [node("n1")], SPREAD)


def test_used_never_exceeds_total_with_default_ratios() -> None:
    nodes = {f"n{i}": node(f"n{i}", cpu=8, ram=8192, disk=100) for i in range(3)}
    placed = 0
    while True:
        try:
            n = choose_node(Demand(3, 1000, 10), nodes.values(), SPREAD)
        except NoCapacity:
            break
        nodes[n.id] = NodeUsage(n.id, True, 8, 8192, 100, n.cpu_used + 3, n.ram_mb_used + 1000, n.disk_gb_used + 10)
        placed += 1
    assert placed == 6  # two per node: a third would need 9 of 8 vCPUs
    assert all(n.cpu_used <= n.cpu_total for n in nodes.values())


def test_placement_is_fast_with_1000_nodes() -> None:
    nodes = [node(f"node-{i}", cpu_used=i % 30) for i in range(1000)]
    start = time.perf_counter()
    for _ in range(200):
        choose_node(Demand(2, 2048, 20), nodes, SPREAD)
    per_call = (time.perf_counter() - start) / 200
    assert per_call < 0.01  # generous bound for slow CI; bench/ prints the real figure


def test_cordoned_and_excluded_nodes_take_no_new_vm() -> None:
    from dataclasses import replace

    nodes = [replace(node("n1"), cordoned=True), node("n2", 30), node("n3", 31)]
    assert choose_node(Demand(1, 512, 10), nodes, SPREAD).id == "n2"
    assert choose_node(Demand(1, 512, 10, exclude=frozenset({"n2"})), nodes, SPREAD).id == "n3"
    with pytest.raises(NoCapacity, match="node n1 is cordoned"):
        choose_node(Demand(1, 512, 10, node_id="n1"), nodes, SPREAD)
    with pytest.raises(NoCapacity, match="every online node is cordoned"):
        choose_node(Demand(1, 512, 10), nodes[:1], SPREAD)
    with pytest.raises(NoCapacity, match="no other node is online"):
        choose_node(Demand(1, 512, 10, exclude=frozenset({"n2", "n3"})), nodes, SPREAD)
    with pytest.raises(NoCapacity, match="node n2 cannot take this VM"):
        choose_node(Demand(1, 512, 10, node_id="n2", exclude=frozenset({"n2"})), nodes, SPREAD)
