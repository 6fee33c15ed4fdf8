"""`vmplane vm ssh`: the system `ssh` pointed at a VM's SSH forward, host key checked.

When the VM's `ssh` names the guest's host key (the tiny image's key, from its manifest),
ssh checks against exactly that key, through a temporary known_hosts file
(StrictHostKeyChecking=yes). Otherwise the key is learnt on first use and checked after
that, kept in the user's known_hosts under the alias `vmplane-<vm id>` (forwarded ports are
reused by other VMs, so host:port would not name one guest).
"""

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def ssh_argv(ssh: dict[str, Any], vm_id: str, known_hosts: Path | None, identity: str | None, user: str | None, args: list[str]) -> list[str]:
    """The argv of `ssh` for a VM's `ssh` endpoint ({host, port, user, hostKey}): our options,
    the destination, then `args` (more ssh options and/or the remote command, as ssh reads
    options after the destination up to the first word that is not one)."""
    argv = [shutil.which("ssh") or "ssh", "-p", str(int(ssh["port"]))]
    if not str(ssh["host"]) or str(ssh["host"]).startswith("-"):
        raise ValueError(f"bad SSH host {ssh['host']!r}")
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", f"HostKeyAlias=vmplane-{vm_id}", "-o", "StrictHostKeyChecking=accept-new"]
    if identity is not None:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    return [*argv, "-l", user or ssh["user"], ssh["host"], *args]


def run_ssh(ssh: dict[str, Any], vm_id: str, identity: str | None, user: str | None, args: list[str]) -> int:
    """Run ssh in the foreground (it owns the terminal; Ctrl-C goes to it) and return its
    exit status (255: ssh's own errors)."""
    with tempfile.TemporaryDirectory(prefix="vmplane-ssh-") as tmp:
        known_hosts = None
        if ssh.get("hostKey"):
            known_hosts = Path(tmp) / "known_hosts"
            known_hosts.write_text(f"[{ssh['host']}]:{int(ssh['port'])} {ssh['hostKey']}\n")
        argv = ssh_argv(ssh, vm_id, known_hosts, identity, user, args)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is ssh's
        try:
            proc = subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
            return proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
