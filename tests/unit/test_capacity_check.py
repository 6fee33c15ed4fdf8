"""Capacity.check of a create: refuses exactly when the nodes cannot take the whole request,
at the index of the first VM that finds no room, for runs of alike VMs (counted per node) as
for VMs placed one by one (choose_node)."""

import random
from dataclasses import replace

import pytest

from vmplane.errors import InvalidRequest, NoCapacity
from vmplane.placement import Demand, NodeUsage, Policy, choose_node
from vmplane.services.capacity import Capacity


def capacity(nodes: list[NodeUsage], cpu_ratio: float = 4.0) -> Capacity:
    cap = Capacity.__new__(Capacity)  # no store: _check works on the cached view alone
    cap.policy = Policy(cpu_ratio=cpu_ratio)
    cap.ratios = (cpu_ratio, 1.0, 1.0)
    cap._cache = {n.id: n for n in nodes}
    return cap


def one_by_one(nodes: list[NodeUsage], demands: list[Demand], policy: Policy) -> int | None:
    """The index of the first demand choose_node finds no room for, placing them in turn."""
    usage = {n.id: n for n in nodes}
    for i, d in enumerate(demands):
        try:
            node = choose_node(d, usage.values(), policy)
        except NoCapacity:
            return i
        usage[node.id] = replace(node, cpu_used=node.cpu_used + d.cpu, ram_mb_used=node.ram_mb_used + d.ram_mb,
                                 disk_gb_used=node.disk_gb_used + d.disk_gb)  # fmt: skip
    return None


@pytest.mark.parametrize("seed", range(40))
def test_alike_vms_are_refused_exactly_where_placing_them_one_by_one_fails(seed: int) -> None:
    rnd = random.Random(seed)
    nodes = [
        NodeUsage(f"node-{i}", rnd.random() > 0.1, rnd.choice([2, 4, 8]), rnd.choice([2048, 4096]), rnd.choice([20, 50]),
                  rnd.randrange(0, 8), rnd.randrange(0, 2048), rnd.randrange(0, 20), cordoned=rnd.random() < 0.1)
        for i in range(rnd.randrange(1, 6))
    ]  # fmt: skip
    demand = Demand(rnd.choice([1, 2]), rnd.choice([256, 512, 1024]), rnd.choice([1, 5]))
    demands = [demand] * rnd.randrange(1, 60)
    cap = capacity(nodes)
    expected = one_by_one(nodes, demands, cap.policy)
    try:
        cap._check(demands)
        got = None
    except NoCapacity as exc:
        got = int(exc.details["field"][1:].split("]")[0]) if len(demands) > 1 else 0
    except InvalidRequest:
        return  # bigger than any node: not a question of room
    assert got == expected, (nodes, demand, len(demands))


def test_the_refusal_names_the_setting_and_the_index() -> None:
    cap = capacity([NodeUsage("node-1", True, 2, 4096, 20, 0, 0, 0)])
    cap._check([Demand(1, 256, 1)] * 8)  # 2 cores x 4.0
    with pytest.raises(NoCapacity) as refused:
        cap._check([Demand(1, 256, 1)] * 9)
    assert refused.value.message == (
        "[8]: no node has 1 free vCPU (node-1: 8 of 8 vCPUs claimed at VMPLANE_CPU_OVERCOMMIT=4.0), once the 8 VMs before it are placed"
    )
    with pytest.raises(InvalidRequest) as beyond:
        cap._check([Demand(9, 256, 1)])
    assert beyond.value.details["field"] == "resources.cpu"
    assert beyond.value.message == "resources.cpu: 9 vCPUs is more than any node can hold (at most 8: node-1's 2 vCPUs x VMPLANE_CPU_OVERCOMMIT=4.0)"
