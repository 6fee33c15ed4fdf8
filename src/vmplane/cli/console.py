"""`vmplane vm console`: the terminal attached to a VM's serial console over its WebSocket.

On a terminal, stdin goes raw (every key reaches the guest, Ctrl-C included) and Ctrl-]
detaches; the terminal's settings are restored however the session ends. When stdin is not
a terminal (a pipe, a file), what it holds is sent, and the command ends once the guest has
been quiet for `linger` seconds after the end of stdin.
"""

import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

DETACH = b"\x1d"  # Ctrl-]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal `fd` in raw mode for the duration; its settings restored on any exit."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(ws_url: str, headers: dict[str, str], name: str, linger: float = 1.0) -> int:
    """Bridge stdin/stdout and the console WebSocket at `ws_url`; returns the exit status
    (0: detached or input done; 1: the console closed from the other side)."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    interactive = os.isatty(stdin)
    with connect(ws_url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        closed = threading.Event()
        last_output = [time.monotonic()]

        def guest_to_terminal() -> None:
            try:
                for msg in ws:
                    data = msg if isinstance(msg, bytes) else msg.encode()
                    os.write(stdout, data)
                    last_output[0] = time.monotonic()
            except (ConnectionClosed, OSError):
                pass
            closed.set()

        reader = threading.Thread(target=guest_to_terminal, daemon=True)
        reader.start()
        if interactive:
            sys.stderr.write(f"Connected to the serial console of {name}. Press Ctrl-] to detach.\r\n")
            sys.stderr.flush()
            ws.send(b"\r")  # wake the prompt up
            with raw_terminal(stdin):
                detached = _pump(ws, stdin, closed, interactive=True)
            sys.stderr.write("\r\n" + ("Detached.\n" if detached else "The console was closed.\n"))
            return 0 if detached else 1
        _pump(ws, stdin, closed, interactive=False)
        while not closed.is_set() and time.monotonic() - last_output[0] < linger:
            closed.wait(0.1)
        return 0


def _pump(ws: ClientConnection, stdin: int, closed: threading.Event, interactive: bool) -> bool:
    """Send what stdin gives until Ctrl-] (interactive: True), the end of stdin or the
    console closing (False)."""
    while not closed.is_set():
        ready, _, _ = select.select([stdin], [], [], 0.2)
        if not ready:
            continue
        data = os.read(stdin, 4096)
        if not data:
            return False
        if interactive and DETACH in data:
            before = data[: data.index(DETACH)]
            if before:
                ws.send(before)
            return True
        try:
            ws.send(data)
        except ConnectionClosed:
            return False
    return False
