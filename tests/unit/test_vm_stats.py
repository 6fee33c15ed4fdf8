"""Memory figures of a VM's stats: the guest's own (balloon statistics) where it reports them,
else QEMU's host RSS, labelled so; the label crosses the agent wire."""

from dataclasses import replace

import pytest

from vmplane.drivers.base import VmStats
from vmplane.drivers.qemu.guest import guest_used_mb
from vmplane.drivers.remote_wire import stats_from_wire, stats_to_wire
from vmplane.errors import InvalidRequest

MIB = 1 << 20


def reported(total: int, available: int, last_update: int = 1765100000) -> dict[str, object]:
    """a balloon's `qom-get guest-stats`, as QEMU 7.2 answers it"""
    return {"stats": {"stat-total-memory": total, "stat-available-memory": available, "stat-free-memory": available // 2,
                      "stat-swap-in": 0, "stat-swap-out": 0, "stat-htlb-pgalloc": -1}, "last-update": last_update}  # fmt: skip


def test_the_guests_figure_is_total_minus_available() -> None:
    assert guest_used_mb(reported(218 * MIB, 179 * MIB)) == 39


@pytest.mark.parametrize(
    "got",
    [
        reported(218 * MIB, 179 * MIB, last_update=0),  # polling asked for, nothing reported yet
        reported(-1, -1),  # a driver that does not give these figures
        reported(218 * MIB, -1),
        reported(218 * MIB, 300 * MIB),  # more available than there is: not believed
        {"stats": "nope", "last-update": 5},
        {"last-update": 5},
        None,
        [],
    ],
)
def test_no_report_means_no_guest_figure(got: object) -> None:
    assert guest_used_mb(got) is None


def test_the_source_crosses_the_agent_wire_and_an_old_agent_means_host_rss() -> None:
    s = VmStats(cpu_percent=1.5, memory_mb=39, memory_total_mb=256, disk_read_bytes=1, disk_write_bytes=2, net_rx_bytes=3,
                net_tx_bytes=4, uptime_seconds=9.5, memory_source="guest")  # fmt: skip
    wire = stats_to_wire(s)
    assert wire["memorySource"] == "guest" and wire["memoryMb"] == 39
    assert stats_from_wire(wire) == s
    old = {k: v for k, v in wire.items() if k != "memorySource"}
    assert stats_from_wire(old) == replace(s, memory_source="host-rss")
    with pytest.raises(InvalidRequest) as bad:
        stats_from_wire({**wire, "memorySource": "whatever the agent says"})
    assert bad.value.details["field"] == "stats.memorySource"

