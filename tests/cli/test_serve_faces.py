"""`vmplane serve --face NAME=HOST:PORT`: a face at the root of a listener of its own."""

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from vmplane.cli import app

from ..support import admin_key, free_port, serve, wait_ready


def run_serve(*args: str) -> Any:
    return CliRunner().invoke(app, ["serve", "--driver", "sim", *args])


def test_bad_face_options_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for value, says in (
        ("fastvm", "is not NAME=HOST:PORT"),
        ("nope=127.0.0.1:1", "unknown face 'nope'; known: native, fastvm"),
        ("fastvm=127.0.0.1", "HOST:PORT"),
        ("fastvm=127.0.0.1:70000", "port from 1 to 65535"),
    ):
        r = run_serve("--data-dir", str(tmp_path / "d"), "--face", value)
        assert r.exit_code == 2 and says in r.output, (value, r.output)
    port = free_port()
    r = run_serve("--data-dir", str(tmp_path / "d"), "--port", str(port), "--face", f"native=127.0.0.1:{port}")
    assert r.exit_code == 2 and "given twice" in r.output
    r = run_serve("--data-dir", str(tmp_path / "d"), "--insecure-no-auth", "--face", "fastvm=0.0.0.0:1")
    assert r.exit_code == 2 and "loopback" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run_serve("--data-dir", str(tmp_path / "d"), "--face", f"fastvm=127.0.0.1:{taken.getsockname()[1]}")
    assert r.exit_code == 1 and "cannot listen on 127.0.0.1:" in r.output
    assert not (tmp_path / "d").exists()  # nothing was started


def test_serve_with_face_listeners(tmp_path: Path) -> None:
    port, fastvm_port, native_port = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    proc = serve(tmp_path / "data", port, log, ["--driver", "sim", "--face", f"fastvm=127.0.0.1:{fastvm_port}", "--face", f"native=127.0.0.1:{native_port}"])
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        key = {"X-API-Key": admin_key(tmp_path / "data")}
        # a client that throws away the path of its base URL
        r = httpx.post(f"http://127.0.0.1:{fastvm_port}/v1/vms", json={"machineType": "c2m4"}, headers=key, timeout=30)
        assert r.status_code == 201 and r.json()["cpu"] == 2, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/compat/fastvm/v1/vms/{r.json()['id']}", headers=key).json()["machineName"] == "c2m4"
        assert httpx.get(f"http://127.0.0.1:{native_port}/vms", headers=key).json()["items"][0]["uuid"] == r.json()["id"]
        assert httpx.get(f"http://127.0.0.1:{fastvm_port}/livez").json() == {"status": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=30)
    # uvicorn re-raises the signal once it has shut down cleanly (as `uvicorn.run` does)
    assert code in (0, -signal.SIGTERM) and time.monotonic() - started < 10, log.read_text()
    assert "Traceback" not in log.read_text()


def test_as_key_file_is_checked_before_anything_starts(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("vmp_" + "k" * 40 + "\n")
    key.chmod(0o600)
    loose = tmp_path / "loose"
    loose.write_text("vmp_" + "k" * 40)
    loose.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    two = tmp_path / "two"
    two.write_text("vmp_a vmp_b\n")
    two.chmod(0o600)
    for value, says in (
        (f"hypersdk=127.0.0.1:1,as-key-file={tmp_path / 'missing'}", "cannot read the key file"),
        (f"hypersdk=127.0.0.1:1,as-key-file={loose}", "chmod 600"),
        (f"hypersdk=127.0.0.1:1,as-key-file={tmp_path}", "not a regular file"),
        (f"hypersdk=127.0.0.1:1,as-key-file={empty}", "one API key on one line"),
        (f"hypersdk=127.0.0.1:1,as-key-file={two}", "one API key on one line"),
        (f"hypersdk=0.0.0.0:1,as-key-file={key}", "not a loopback address"),
        ("hypersdk=127.0.0.1:1,allow-remote", "allow-remote goes with as-key-file"),
        (f"hypersdk=127.0.0.1:1,as-key-file={key},as-key-file={key}", "as-key-file=PATH (once)"),
        ("hypersdk=127.0.0.1:1,as-key=x", "the options of a face listener"),
    ):
        r = run_serve("--data-dir", str(tmp_path / "d"), "--face", value)
        assert r.exit_code == 2 and says in r.output, (value, r.output)
    assert not (tmp_path / "d").exists()  # nothing was started
    # allow-remote says it knowingly: the key is read and the listener bound (then the port is taken)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        r = run_serve("--data-dir", str(tmp_path / "d"), "--face", f"hypersdk=0.0.0.0:{taken.getsockname()[1]},as-key-file={key},allow-remote")
    assert r.exit_code == 1 and "cannot listen on 0.0.0.0:" in r.output, r.output


def test_a_face_listener_acting_as_a_key_file(tmp_path: Path) -> None:
    port, face_port = free_port(), free_port()
    data, log = tmp_path / "data", tmp_path / "server.log"
    bogus = tmp_path / "bogus"
    bogus.write_text("vmp_" + "b" * 40 + "\n")
    bogus.chmod(0o600)
    proc = serve(data, port, log, ["--driver", "sim", "--face", f"hypersdk=127.0.0.1:{face_port},as-key-file={bogus}"])
    assert proc.wait(timeout=60) == 3  # a key that does not authenticate stops the server at start
    assert "does not authenticate" in log.read_text()
    proc = serve(data, port, log, ["--driver", "sim", "--face", f"hypersdk=127.0.0.1:{face_port},as-key-file={data / 'admin-api-key'}"])
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        # the document's curl examples, with no key at all
        r = httpx.post(f"http://127.0.0.1:{face_port}/jobs/submit", json={"vm_path": "DC/vm/test-vm", "vcenter_url": f"127.0.0.1:{free_port()}", "username": "u"}, timeout=30)
        assert r.status_code == 201 and r.json()["job_id"].startswith("imp-"), r.text
        assert httpx.post(f"http://127.0.0.1:{face_port}/jobs/query", json={"all": True}).json()["total"] == 1
        assert httpx.get(f"http://127.0.0.1:{port}/compat/hypersdk/status").status_code == 401  # the shared listener still asks
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text()


def test_servers_run_on_uvloop() -> None:
    """`vmplane serve` and `vmplane agent` run through serving.run: the stock event loop had
    cost a GET of one VM three quarters of its throughput (docs/benchmarks.md)."""
    import asyncio

    import uvloop

    from vmplane.cli.serving import run

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert run(loop_type()) is uvloop.Loop
