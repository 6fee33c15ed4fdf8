"""`vmplane events` across a server restart: when `vmplane serve` is SIGTERMed the follower
says "the server went away; reconnecting" (no traceback), and once a server is back it resumes
after the last event it printed (Last-Event-ID): the events written while it was away, such as
the new server's own start-up events, arrive, and none twice. A server killed outright (the
connection just drops) is said the same way."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from ..support import admin_key, free_port, serve, wait_ready, wait_until

pytestmark = pytest.mark.slow


class Follower:
    """`vmplane events --json --since 0` as a process, its output read as it comes."""

    def __init__(self, url: str, key: str) -> None:
        env = {**os.environ, "VMPLANE_API_KEY": key, "VMPLANE_URL": url, "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-m", "vmplane.cli.main", "events", "--json", "--since", "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.events: list[dict[str, object]] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream: object, events: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            (self.events.append(json.loads(line)) if events else self.err.append(line.rstrip("\n")))

    def stderr(self) -> str:
        return "\n".join(self.err)

    def saw(self, type_: str, after: int = 0) -> bool:
        return any(e["type"] == type_ and int(str(e["id"])) > after for e in self.events)


def test_follower_says_the_server_went_away_and_resumes_after_a_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data, log = tmp_path / "data", tmp_path / "server.log"
    proc = serve(data, port, log, ["--driver", "sim"])
    follower = None
    try:
        wait_ready(url, proc)
        key = admin_key(data)
        api = httpx.Client(base_url=f"{url}/api/v1", headers={"X-API-Key": key}, timeout=30)
        follower = Follower(url, key)
        wait_until(lambda: follower.saw("node.online"), 30, "the follower connected (replaying from the first event)")
        r = api.post("/vms", json={"name": "before"})
        assert r.status_code == 202, r.text
        wait_until(lambda: follower.saw("job.completed"), 30, "the follower printing the create's events")
        last_before = max(int(str(e["id"])) for e in follower.events)

        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        wait_until(lambda: "the server went away; reconnecting" in follower.stderr(), 10, "the follower saying the server went away")
        assert follower.proc.poll() is None, follower.stderr()  # still following

        proc = serve(data, port, log, ["--driver", "sim"])  # the same server, back
        wait_ready(url, proc)
        # the new server's start-up (node-1 online again) happened before the follower was back
        # with it: only resuming after the last event it saw brings it
        wait_until(lambda: follower.saw("node.online", after=last_before), 30, "the events written while the follower was away")
        r = api.post("/vms", json={"name": "after"})
        assert r.status_code == 202, r.text
        wait_until(lambda: follower.saw("job.completed", after=last_before), 30, "new events after the reconnect")
        ids = [int(str(e["id"])) for e in follower.events]
        assert ids == sorted(set(ids)), ids  # none twice, in order
        err = follower.stderr()
        assert f"reconnected; resuming after event {last_before}" in err, err
        assert err.count("the server went away; reconnecting") == 1, err  # said once, not at every retry
        assert "Traceback" not in err and "Error" not in err, err

        proc.kill()  # a server that dies without a word: the connection just drops
        proc.wait()
        wait_until(lambda: follower.stderr().count("the server went away; reconnecting") == 2, 10, "the follower saying so again")
        assert follower.proc.poll() is None and "Traceback" not in follower.stderr(), follower.stderr()
    finally:
        if follower is not None:
            follower.proc.kill()
            follower.proc.wait()
        proc.kill()
        proc.wait()


def test_follower_with_no_server_is_an_error_not_a_loop() -> None:
    env = {**os.environ, "VMPLANE_API_KEY": "vmp_x", "VMPLANE_URL": f"http://127.0.0.1:{free_port()}"}
    r = subprocess.run([sys.executable, "-m", "vmplane.cli.main", "events"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot reach vmplane at http://127.0.0.1:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
