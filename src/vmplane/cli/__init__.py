"""The `vmplane` command: `serve` runs a server; `vm`, `job`, `node` talk to one."""

from .main import app, main

__all__ = ["app", "main"]
