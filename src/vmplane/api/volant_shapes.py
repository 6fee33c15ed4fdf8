"""Volant's words that its MCP command set (api/mcp_commands.py) answers in as well as its
face (api/compat/volant): VM status words and the shape of a deployment. They live here,
beside both and in neither: the Volant face serves the command set (its POST /api/v1/mcp),
so the command set cannot import the face's wire without a cycle."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from .. import clock

VM_STATUS = {
    "provisioning": "pending",
    "starting": "starting",
    "running": "running",
    "rebooting": "running",
    "updating": "running",
    "stopping": "stopping",
    "stopped": "stopped",
    "deleting": "stopping",
    "error": "crashed",
    "unknown": "crashed",
}
"""vmplane VM status -> Volant's (pending, starting, running, stopping, stopped, crashed)"""


def deployment(row: Row[Any], ready: int) -> dict[str, Any]:
    return {
        "name": row.name,
        "desired_replicas": row.replicas,
        "ready_replicas": ready,
        "config": row.config,
        "created_at": clock.rfc3339(row.created_at),
        "updated_at": clock.rfc3339(row.updated_at),
    }
