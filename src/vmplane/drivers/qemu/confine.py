"""Who QEMU and qemu-img run as: the unprivileged system user `vmplane-qemu` when vmplane runs
as root, else vmplane's own user. One decision per process, logged once at start.

Confined, QEMU starts as root (it opens its disk, seed, kernel, sockets and devices), then
drops to the user with `-runas`; qemu-img runs as the user from its first instruction
(`images.run_tool`), reaching files only through descriptors vmplane opened and handed to it
(`/dev/fd/N`). The data dir is 0700 root, so the user can reach nothing in it by path.
"""

import logging
import os
import pwd
import shutil
from dataclasses import dataclass

log = logging.getLogger("vmplane.drivers.qemu")

DEFAULT_USER = "vmplane-qemu"


@dataclass(frozen=True, slots=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    setpriv: str = "setpriv"
    """util-linux's setpriv, which tools run through to become the user (asyncio's user= is
    not there under uvloop, which `vmplane serve` runs on)"""

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run as this user: no supplementary groups, no new privileges (setuid
        binaries gain nothing)."""
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--no-new-privs", "--", *argv]


def resolve(enabled: bool, name: str) -> tuple[QemuUser | None, str]:
    """The user to run QEMU and qemu-img as (None: as vmplane itself), and why."""
    if not enabled:
        return None, "confinement is off (VMPLANE_QEMU_CONFINE=false): QEMU and qemu-img run as vmplane's own user"
    if os.geteuid() != 0:
        return None, f"vmplane is not root: QEMU and qemu-img run as vmplane's own user ({_me()})"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, (
            f"user {name!r} does not exist (scripts/install-qemu.sh creates it): QEMU and qemu-img run as root, unconfined"
        )
    if pw.pw_uid == 0:
        return None, f"user {name!r} is root: QEMU and qemu-img run as root, unconfined"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None, "setpriv (util-linux) is not installed: QEMU and qemu-img run as root, unconfined"
    return QemuUser(name, pw.pw_uid, pw.pw_gid, setpriv), f"QEMU and qemu-img run as {name} (uid {pw.pw_uid}), QEMU with -sandbox"


_current: QemuUser | None = None
_decided = False


def configure(enabled: bool = True, name: str = DEFAULT_USER) -> QemuUser | None:
    """Decide (again) for this process, from the settings; logs the decision."""
    global _current, _decided
    user, why = resolve(enabled, name)
    if user is None and enabled:
        log.warning("QEMU confinement: %s", why)
    else:
        log.info("QEMU confinement: %s", why)
    _current, _decided = user, True
    return user


def current() -> QemuUser | None:
    """This process's decision (the default one, confined when possible, if nobody configured)."""
    if not _decided:
        configure()
    return _current


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"
