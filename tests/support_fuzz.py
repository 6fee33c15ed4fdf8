"""Contract fuzzing with schemathesis against a real `vmplane serve` process on the sim driver:
one server set-up and one way of running `st` for every face's fuzz test."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .support import admin_key, free_port, serve, wait_ready

ENV = {
    "VMPLANE_RATE_LIMIT_PER_SECOND": "100000", "VMPLANE_RATE_LIMIT_BURST": "100000", "VMPLANE_SIM_LATENCY_MS": "1",
    "VMPLANE_ORG_RATE_LIMIT_PER_SECOND": "100000", "VMPLANE_ORG_RATE_LIMIT_BURST": "100000",
    # nodes the fuzzer cannot fill: 'no room now' is tested elsewhere
    "VMPLANE_SIM_NODE_CPU": "1000000", "VMPLANE_SIM_NODE_RAM_MB": str(2**40), "VMPLANE_SIM_NODE_DISK_GB": str(2**40),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FuzzServer:
    url: str
    """the server's root URL"""
    key: str
    """the owner's API key"""
    log: Path
    tmp: Path

    def run(
        self, contract: str | Path, base_url: str, *args: str, config: str | None = None, examples: int = 15, timeout: float = 900
    ) -> str:
        """Run schemathesis on `contract` (a file or URL) against `base_url` with the owner's
        key; fails the test on any finding, and when the server logged a traceback. Returns the
        summary it printed."""
        argv = [str(Path(sys.executable).with_name("st"))]
        if config is not None:
            (self.tmp / "schemathesis.toml").write_text(config)
            argv += ["--config-file", str(self.tmp / "schemathesis.toml")]
        argv += ["run", str(contract), "--url", base_url, "-H", f"X-API-Key: {self.key}", "--max-examples", str(examples),
                 "--seed", "7", "--request-timeout", "20", *args]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.tmp)  # its cache goes there
        summary = r.stdout[-6000:]
        print(summary[summary.find("SUMMARY") :])
        assert r.returncode == 0, r.stdout[-20000:]
        log = self.log.read_text()
        assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]
        return summary


@contextmanager
def fuzz_server(tmp_path: Path, *args: str) -> Iterator[FuzzServer]:
    """A `vmplane serve --driver sim --sim-nodes 2` with nodes the fuzzer cannot fill."""
    port = free_port()
    log = tmp_path / "server.log"
    proc = serve(tmp_path / "data", port, log, ["--driver", "sim", "--sim-nodes", "2", *args], ENV)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield FuzzServer(url, admin_key(tmp_path / "data"), log, tmp_path)
    finally:
        proc.kill()
        proc.wait()
