"""Stored stats samples (issue 23, item 9): the sampler writes each tick's samples in one batch,
prunes what is past the retention, serves a VM's and a node's history and the VM list's live
figures; another organization's VM answers 404.

The sim driver measures nothing (`capabilities.stats` is false), so these tests use a sim
whose VMs report figures the test sets, as a real driver's stats path would."""

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from sqlalchemy import delete, event, func, insert, select

from vmplane import clock
from vmplane.drivers.base import VmStats
from vmplane.drivers.sim import SimDriver
from vmplane.store.tables import node_samples, vm_samples

from ..support import Server
from .test_tenancy import new_org


@dataclass
class MeteredSimDriver(SimDriver):
    """The sim driver with a stats path: figures per VM as the test sets them (counters grow
    by `step` bytes at each call, as a running VM's do)."""

    cpu_percent: dict[str, float] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.capabilities = replace(self.capabilities, stats=True)
        self._counters: dict[str, int] = {}

    async def stats_vm(self, vm_id: str) -> VmStats:
        vm = self._vm(vm_id)
        self.calls += 1
        n = self._counters[vm_id] = self._counters.get(vm_id, 0) + 1000
        return VmStats(
            cpu_percent=self.cpu_percent.get(vm_id, 12.5), memory_mb=vm.resources.ram_mb // 2, memory_total_mb=vm.resources.ram_mb,
            disk_read_bytes=n, disk_write_bytes=2 * n, net_rx_bytes=3 * n, net_tx_bytes=4 * n, uptime_seconds=1.0,
        )  # fmt: skip


def _statements(server: Server) -> list[tuple[str, bool]]:
    """Every SQL statement the server's store runs from now on: (text, executemany)."""
    store = server.rt.store
    engine = store._sync_engine if store._sync_engine is not None else store.engine.sync_engine
    seen: list[tuple[str, bool]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, executemany))

    event.listen(engine, "before_cursor_execute", before)
    return seen


async def _count(server: Server, table: Any, **where: Any) -> int:
    async with server.rt.store.read() as conn:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return int((await conn.execute(q)).scalar_one())


async def _metered(server_factory: Any, **settings: Any) -> Server:
    # a sampling period long enough that the loop's own ticks (one at start) leave the test's alone
    return await server_factory(stats_sample_seconds=3600, nodes=[("node-1", MeteredSimDriver(hostname="node-1", latency=0.001))], **settings)


@pytest.fixture
async def metered(server_factory: Any) -> Server:
    return await _metered(server_factory)


async def test_each_tick_writes_its_samples_in_one_batch_and_prunes(server_factory: Any, database_url: str) -> None:
    server = await _metered(server_factory, database_url=database_url)
    job = await server.create([{"name": f"st{i}", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 1}} for i in range(3)])
    ids = [t["resourceId"] for t in job["tasks"]]
    r = await server.client.post(f"/api/v1/vms/{ids[2]}/stop")
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    async with server.rt.store.write() as conn:  # a sample past the retention (an hour) and one inside it
        old = clock.now() - 3700
        row = {"node_id": "node-1", "cpu_percent": 1.0, "memory_mb": 1, "memory_total_mb": 2, "memory_source": None,
               "disk_read_bytes": 0, "disk_write_bytes": 0, "net_rx_bytes": 0, "net_tx_bytes": 0}  # fmt: skip
        await conn.execute(insert(vm_samples), [{"vm_id": ids[0], "at": old, **row}, {"vm_id": ids[0], "at": clock.now() - 1800, **row}])
    before = await _count(server, vm_samples)

    seen = _statements(server)
    await server.rt.stats_history.tick()
    inserts = [(s, many) for s, many in seen if s.startswith("INSERT INTO vm_samples")]
    assert len(inserts) == 1 and inserts[0][1], inserts  # one executemany for every running VM, not one per VM
    assert len([s for s, _ in seen if s.startswith("INSERT INTO node_samples")]) == 1
    assert len([s for s, _ in seen if s.startswith("DELETE FROM vm_samples")]) == 1  # the prune, in the same tick
    assert server.rt.stats_history.last_tick["vms"] == 2  # the stopped VM is not sampled
    assert await _count(server, vm_samples) == before + 2 - 1  # two new ones, the old one pruned
    assert await _count(server, vm_samples, vm_id=ids[2]) == 0
    assert await _count(server, node_samples, node_id="node-1") >= 1

    # the history: oldest first, rates from the counters' differences
    await server.rt.stats_history.tick()
    h = (await server.client.get(f"/api/v1/vms/{ids[1]}/stats/history")).json()
    assert h["vmId"] == ids[1] and h["intervalSeconds"] == 3600
    items = h["items"]
    assert len(items) >= 2 and [i["at"] for i in items] == sorted(i["at"] for i in items)
    last = items[-1]
    assert last["cpuPercent"] == 12.5 and last["memoryMb"] == 256 and last["memoryTotalMb"] == 512
    assert last["diskReadBps"] > 0 and last["diskWriteBps"] == pytest.approx(2 * last["diskReadBps"], rel=0.01)
    assert last["netTxBps"] == pytest.approx(4 * last["diskReadBps"], rel=0.01)
    # the history from a time on: only what came after it, the first sample's rates still told
    since = items[-1]["at"]
    later = (await server.client.get(f"/api/v1/vms/{ids[1]}/stats/history", params={"since": since})).json()["items"]
    assert [i["at"] for i in later] == [since] and later[0]["diskReadBps"] == last["diskReadBps"]

    # the list: the latest sample of each running VM, none for the stopped one
    listed = {v["id"]: v for v in (await server.client.get("/api/v1/vms")).json()["items"]}
    assert listed[ids[0]]["stats"]["cpuPercent"] == 12.5 and listed[ids[0]]["stats"]["memoryMb"] == 256
    assert listed[ids[2]]["stats"] is None

    # a node's history: claimed vCPUs and RAM (a sim node is not this host: no host figures)
    nh = (await server.client.get("/api/v1/nodes/node-1/stats/history")).json()
    assert nh["nodeId"] == "node-1" and nh["items"]
    n = nh["items"][-1]
    assert (n["cpuUsed"], n["ramMbUsed"]) == (3, 1536) and n["cpuTotal"] == 32 and n["hostCpuPercent"] is None


async def test_history_is_scoped_and_its_input_checked(metered: Server) -> None:
    server = metered
    vm_id = (await server.create({"name": "mine", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}}))["tasks"][0]["resourceId"]
    await server.rt.stats_history.tick()
    assert (await server.client.get(f"/api/v1/vms/{vm_id}/stats/history")).json()["items"]
    _org, other = await new_org(server)
    r = await other.get(f"/api/v1/vms/{vm_id}/stats/history")
    assert r.status_code == 404 and vm_id in r.json()["error"], r.text
    assert (await other.get("/api/v1/vms")).json()["items"] == []  # nor its figures in a list
    r = await server.client.get(f"/api/v1/vms/{vm_id}/stats/history", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "since", r.text
    r = await server.client.get(f"/api/v1/vms/{vm_id}/stats/history", params={"since": "2999-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "since", r.text
    assert (await server.client.get("/api/v1/vms/vm-nope/stats/history")).status_code == 404
    assert (await server.client.get("/api/v1/nodes/node-nope/stats/history")).status_code == 404


async def test_a_failing_stats_call_skips_that_vm_only(metered: Server) -> None:
    server = metered
    job = await server.create([{"name": f"f{i}", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}} for i in range(2)])
    ids = [t["resourceId"] for t in job["tasks"]]
    driver = server.rt.replicas.local["node-1"]
    real = driver.stats_vm

    async def flaky(vm_id: str) -> VmStats:
        if vm_id == ids[0]:
            raise RuntimeError("the VM's monitor went away")
        return await real(vm_id)

    object.__setattr__(driver, "stats_vm", flaky)
    await server.rt.stats_history.tick()
    assert await _count(server, vm_samples, vm_id=ids[1]) >= 1
    assert dataclasses.asdict(driver.capabilities)["stats"] is True
    assert server.rt.stats_history.last_tick["vms"] == 1


async def test_the_cli_prints_a_vms_history(metered: Server) -> None:
    """`vmplane vm stats NAME --history`: the stored samples as a table, or the answer as JSON."""
    from ..cli.test_cli_login_user import vmplane

    server = metered
    vm_id = (await server.create({"name": "hist", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}}))["tasks"][0]["resourceId"]
    await server.rt.stats_history.tick()
    await server.rt.stats_history.tick()
    code, out, err = await vmplane(server, {}, "vm", "stats", "hist", "--history", "--json")
    assert code == 0, err
    h = json.loads(out)
    assert h["vmId"] == vm_id and len(h["items"]) == 2 and h["items"][-1]["cpuPercent"] == 12.5
    code, out, err = await vmplane(server, {"COLUMNS": "200"}, "vm", "stats", "hist", "--history")
    assert code == 0, err
    rows = [line for line in out.splitlines() if "12.5" in line]
    assert len(rows) == 2 and "128/256" in rows[-1], out
    code, out, err = await vmplane(server, {}, "vm", "stats", "hist", "--history", "--since", "last tuesday")
    assert code != 0 and "since" in err, (out, err)


@pytest.mark.postgres
async def test_replicas_sample_their_own_nodes_and_the_leader_prunes(server_factory: Any) -> None:
    """Two replicas on one PostgreSQL store: each samples the local nodes it serves (so each
    node once per round), and only the leader prunes."""
    from .test_replicas import pair, until

    a, b = await pair(server_factory, sim_nodes=4, stats_sample_seconds=3600)
    await until(lambda: len(a.rt.replicas.serving) == len(b.rt.replicas.serving) == 2, "two nodes each")
    leader, other = (a, b) if a.rt.replicas.leader else (b, a)
    await until(lambda: a.rt.stats_history.last_tick and b.rt.stats_history.last_tick, "past their loops' first ticks")
    async with a.rt.store.write() as conn:
        await conn.execute(delete(node_samples))  # the samples of the start-up ticks, taken while the nodes were being split
        await conn.execute(insert(node_samples), [{"node_id": "node-1", "at": clock.now() - 7200, "cpu_used": 0, "cpu_total": 1,
                                                   "ram_mb_used": 0, "ram_mb_total": 1}])  # fmt: skip
    await other.rt.stats_history.tick()
    assert other.rt.stats_history.last_tick["nodes"] == 2
    assert await _count(a, node_samples) == 3  # its two nodes; the old sample kept: it does not lead
    await leader.rt.stats_history.tick()
    async with a.rt.store.read() as conn:
        rows = (await conn.execute(select(node_samples.c.node_id, func.count()).group_by(node_samples.c.node_id))).all()
    assert sorted(rows) == [(f"node-{i}", 1) for i in range(1, 5)]  # each node once; the old one pruned by the leader
