"""The backup store: a restic repository (content-addressed, de-duplicated, encrypted chunks,
each verified by its hash on restore). restic, from Debian's packages, does the chunking,
de-duplication and verification we would otherwise have to write and trust.

Every command runs from an argument list; the repository's password lives in a 0600 file.
"""

import asyncio
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import Reason, VmplaneError

CHUNK = 1 << 20


class BackupStoreError(VmplaneError):
    reason = Reason.BACKUP_STORE_FAILED


@dataclass(frozen=True)
class Stored:
    snapshot: str
    logical_bytes: int
    added_bytes: int


class BackupStore:
    def __init__(self, repo: Path, password_file: Path, restic: str = "restic") -> None:
        self.repo = repo
        self.password_file = password_file
        self.restic = restic
        self._init_lock = asyncio.Lock()

    def available(self) -> bool:
        return shutil.which(self.restic) is not None

    def _argv(self, *args: str) -> list[str]:
        return [self.restic, "-r", str(self.repo), "--password-file", str(self.password_file), "--no-cache", *args]

    async def _run(self, *args: str, stdin_path: Path | None = None, stdout_path: Path | None = None, what: str) -> str:
        stdin = open(stdin_path, "rb") if stdin_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
        stdout = open(stdout_path, "wb") if stdout_path else asyncio.subprocess.PIPE  # noqa: SIM115
        try:
            proc = await asyncio.create_subprocess_exec(*self._argv(*args), stdin=stdin, stdout=stdout, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
        except FileNotFoundError as exc:
            raise BackupStoreError("restic is not installed (scripts/install-qemu.sh installs it)") from exc
        finally:
            for f in (stdin, stdout):
                if hasattr(f, "close"):
                    f.close()
        if proc.returncode != 0:
            lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
            raise BackupStoreError(f"{what} failed: {lines[-1] if lines else f'restic exited {proc.returncode}'}")
        return (out or b"").decode(errors="replace")

    async def ensure(self) -> None:
        """Create the repository (and its password) the first time."""
        async with self._init_lock:
            if (self.repo / "config").exists():
                return
            self.repo.parent.mkdir(parents=True, exist_ok=True)
            if not self.password_file.exists():
                fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32) + "\n")
            await self._run("init", what="creating the backup repository")

    async def put(self, image: Path, tag: str) -> Stored:
        """Store a disk image; returns what it weighs logically and what it added."""
        await self.ensure()
        out = await self._run("backup", "--json", "--quiet", "--stdin", "--stdin-filename", "disk.raw", "--tag", tag, stdin_path=image, what="backup")
        summary = next((json.loads(ln) for ln in out.splitlines() if '"summary"' in ln), None)
        if summary is None:
            raise BackupStoreError("restic gave no summary for the backup")
        return Stored(summary["snapshot_id"], int(summary["total_bytes_processed"]), int(summary["data_added"]))

    async def get(self, snapshot: str, dest: Path) -> None:
        """Write a stored image to `dest`; fails (and writes nothing usable) on a corrupt chunk."""
        await self._run("dump", snapshot, "/disk.raw", stdout_path=dest, what="restore")

    async def forget(self, snapshot: str) -> None:
        await self._run("forget", "--prune", snapshot, what="deleting the backup")

    async def stored_bytes(self) -> int:
        """What the repository holds on disk (all backups, after de-duplication)."""
        if not (self.repo / "config").exists():
            return 0
        out = await self._run("stats", "--json", "--mode", "raw-data", what="measuring the backup store")
        return int(json.loads(out).get("total_size", 0))
