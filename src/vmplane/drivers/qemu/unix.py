"""Connecting to unix sockets whose path may exceed the kernel's 107-byte limit."""

import os
import socket
from pathlib import Path

MAX_PATH = 100


def connect_unix(path: Path) -> socket.socket:
    """A connected, non-blocking stream socket to `path`. Long paths go through
    /proc/self/fd/<directory fd>/<name>. Raises OSError (FileNotFoundError,
    ConnectionRefusedError, ...) as connect(2) does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) <= MAX_PATH:
            sock.connect(os.fspath(path))
        else:
            dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
            finally:
                os.close(dir_fd)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
