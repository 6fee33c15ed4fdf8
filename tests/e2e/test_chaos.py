"""The chaos soak's short variant (bench/chaos.py): ~1.5 minutes of faults — replicas killed,
frozen past their lease and restarted, agents killed, PostgreSQL restarted, one agent's network
slowed — against three replicas and three sim agents under a mixed workload, then the checker
reads the recorded histories. Any violation fails the test, each printed with its evidence (the
run directory with every history and log is kept and named in the output)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_finds_no_violation() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--minutes",
        "1.5",
        "--clients",
        "3",
        "--mean-gap",
        "5",
        "--seed",
        "7",
        "--settle-timeout",
        "150",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    report = out.stdout + "\n" + out.stderr[-6000:]
    assert out.returncode == 0 and "violations: 0" in out.stdout, report
    assert "faults: 0" not in out.stdout, report  # faults were really injected
