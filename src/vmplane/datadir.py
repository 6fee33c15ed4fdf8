"""The data dir is private: 0700, and everything vmplane writes in it 0600 (its database and
WAL, disks, seeds, images, keys, backups' staging, logs, sockets).

One mechanism, applied where a process starts (`Runtime.start`, `Agent.run`): the process's
umask becomes 0o077, so every file it, SQLite, QEMU, qemu-img, dnsmasq or restic creates is
private; and the data dir of an existing install is tightened once at start (modes from
before this rule, files a crash left handed to the QEMU user, see `drivers.qemu.images`).
"""

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("vmplane")

UMASK = 0o077


def make_private(data_dir: Path) -> int:
    """Set the process umask to 0o077, create `data_dir` (0700), and tighten what is in it:
    directories 0700, everything else without group or other bits (files 0600, sockets 0700,
    a read-only 0400 stays so), owned by root when this process is root.
    Symbolic links are left alone (not followed). Returns how many entries were changed."""
    os.umask(UMASK)
    data_dir.mkdir(parents=True, exist_ok=True)
    changed = _tighten(data_dir, is_dir=True)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            changed += _tighten(Path(root) / name, is_dir=True)
        for name in files:
            changed += _tighten(Path(root) / name, is_dir=False)
    if changed:
        log.warning("data dir %s: made %d file(s) and director(ies) private (0700/0600)", data_dir, changed)
    return changed


def _tighten(path: Path, is_dir: bool) -> int:
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return 0
        mode = stat.S_IMODE(st.st_mode)
        want = 0o700 if is_dir else mode & 0o700  # no group or other bits (a socket stays 0700, a read-only file 0400)
        touched = 0
        uid = os.geteuid()
        if uid == 0 and (st.st_uid, st.st_gid) != (0, 0):
            os.chown(path, 0, 0, follow_symlinks=False)
            touched = 1
        elif uid != 0 and st.st_uid != uid:
            return 0  # not ours to change (and we could not)
        if mode != want:
            os.chmod(path, want)
            touched = 1
        return touched
    except FileNotFoundError:  # removed while we walked
        return 0
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc.strerror)
        return 0
