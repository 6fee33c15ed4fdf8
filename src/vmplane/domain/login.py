"""The user a guest is logged in as over SSH (a template's `loginUser`, a VM's `ssh.user`).

Distribution cloud images make a default user and keep root out ("Please login as the user
debian"); vmplane's own tiny-linux guest has root alone. A template names its login user, by
default the one its `os` label implies; a VM keeps the one it was made with in its stored
spec, so a later change of the template does not change it.
"""

import re

from ..errors import InvalidRequest

LOGIN_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
"""a Unix user name as useradd takes it (NAME_REGEX of Debian's adduser, up to 32 characters)"""

ROOT = "root"
"""the login of a guest whose os names no distribution (vmplane's tiny-linux among them)"""

BY_OS = {"debian": "debian", "ubuntu": "ubuntu", "fedora": "fedora", "tiny-linux": ROOT}
"""the default user the official cloud images of each distribution make (cloud-init's
`default_user`); any other os: root"""


def default_login_user(os_: str | None) -> str:
    """The login user of a template whose request gave none, from its `os`."""
    return BY_OS.get(os_ or "", ROOT)


def check_login_user(value: str, field: str = "loginUser") -> str:
    """`value` if it is a valid Unix user name, else InvalidRequest naming `field`."""
    if not isinstance(value, str) or not LOGIN_USER_RE.fullmatch(value):  # fullmatch: `$` lets a trailing newline in
        raise InvalidRequest(
            f"{field} {value!r} is not a valid user name: 1-32 lower-case letters, digits, '_' or '-', not starting with a digit or '-'",
            field=field,
        )
    return value
