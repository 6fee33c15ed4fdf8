"""The README's first path, as written there: its first ```sh block is `make run` (run here with
PORT and DATA_DIR of the test's own, in the background, until it says it is ready), the blocks
after it, up to "## Using it", are `vmplane` commands pasted into another terminal: each runs in
order, through the `vmplane` that `make run` put on PATH, with what the start-up log says to
export, and must exit 0. On the qemu driver when QEMU is installed: real tiny-linux guests."""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..support import admin_key, require_qemu

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PORTS = range(18200, 18250)
"""this test's own ports (a fixed range, as the servers of parallel test runs keep apart)"""


def first_path(readme: str) -> tuple[list[str], list[list[str]]]:
    """The README's first ```sh block's lines, and the commands of the ```sh blocks after it
    before "## Using it" (comments dropped, as a shell would)."""
    head = readme.split("\n## Using it", 1)[0]
    blocks = [b.strip().splitlines() for b in re.findall(r"^```sh\n(.*?)^```", head, re.S | re.M)]
    assert len(blocks) >= 2, "the README's first path is a `make run` block and a block of vmplane commands"
    commands = [shlex.split(line, comments=True) for block in blocks[1:] for line in block]
    return blocks[0], [c for c in commands if c]


def port_of_ours() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PORTS}")


def processes_with(text: str) -> dict[int, str]:
    """pid -> command line of the processes whose command line names `text` (this test's paths)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmd and int(proc.name) != os.getpid():
            found[int(proc.name)] = cmd
    return found


def test_the_readmes_first_commands_work_as_written(tmp_path: Path) -> None:
    require_qemu()
    make_block, commands = first_path((ROOT / "README.md").read_text())
    assert [shlex.split(line, comments=True) for line in make_block] == [["make", "run"], ["make", "test"]]
    assert commands and all(c[0] == "vmplane" for c in commands), commands

    port, data, bindir, log = port_of_ours(), tmp_path / "data", tmp_path / "bin", tmp_path / "make-run.log"
    venv = Path(sys.prefix)  # the test suite's set-up virtualenv: `make run` must not set one up again
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMPLANE_")}
    argv = ["make", "-C", str(ROOT), "run", f"PORT={port}", f"DATA_DIR={data}", f"BINDIR={bindir}", f"VENV={venv}",
            "-o", f"{venv}/.installed-stamp"]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = f"vmplane is ready: http://127.0.0.1:{port}/ui/ (API key in {data}/admin-api-key)"
        export = "for the CLI in another shell: export "
        while export not in (said := log.read_text(errors="replace")):
            assert proc.poll() is None, f"make run exited:\n{said}"
            assert time.monotonic() - started < 180, f"not ready in 180 s:\n{said}"
            time.sleep(0.1)
        assert ready in said and f"make run: the vmplane command is {bindir}/vmplane -> {venv}/bin/vmplane" in said, said
        # the other terminal: PATH with the link, what the log says to export, another directory
        exported = dict(kv.split("=", 1) for kv in said.split(export, 1)[1].splitlines()[0].split())
        assert exported == {"VMPLANE_URL": f"http://127.0.0.1:{port}", "VMPLANE_DATA_DIR": str(data)}
        # QEMU is here: the node runs real guests (the sim driver is the fallback without it)
        nodes = httpx.get(f"http://127.0.0.1:{port}/api/v1/nodes", headers={"X-API-Key": admin_key(data)}, timeout=10).json()["items"]
        assert [n.get("simulated", False) for n in nodes] == [False], nodes
        shell = {**env, **exported, "PATH": f"{bindir}:{env['PATH']}", "COLUMNS": "200"}
        elsewhere = tmp_path / "terminal"
        elsewhere.mkdir()
        for command in commands:
            done = subprocess.run(command, cwd=elsewhere, env=shell, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, f"{shlex.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            if command[1:3] == ["vm", "exec"] and "uname" in command:
                assert done.stdout.startswith("Linux "), done.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the `vmplane serve` it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = processes_with(f"{tmp_path}/")  # guests (and their helpers) of this test's data dir
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not left, f"still running after `vmplane vm delete`: {left}"
