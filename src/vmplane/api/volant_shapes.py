"""Volant's words that its MCP command set (api/mcp_commands.py) answers in as well as its
face (api/compat/volant): VM status words and the shape of a deployment. They live here,
beside both and in neither: the Volant face serves the command set (its POST /api/v1/mcp),
so the command set cannot import the face's wire without a cycle. Errors about a VM are said
in those words too (`about_vm`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Row

from .. import clock
from ..domain import Vm
from ..errors import Reason, VmplaneError

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


def _volant_states(states: Any) -> list[str]:
    states = [states] if isinstance(states, str) else list(states)
    return sorted({VM_STATUS.get(str(s), str(s)) for s in states})


@contextmanager
def about_vm(vm: Vm, doing: str) -> Iterator[None]:
    """Core errors raised about `vm` in Volant's terms: a Volant client knows the VM by its
    name, not vmplane's `vm-…` id, and its states by Volant's words. A refusal for the VM's
    state reads `cannot <doing> VM <name>: it is <state>` with `current` and `required` in
    Volant's states; any other error names the VM by its name where it named the id."""
    try:
        yield
    except VmplaneError as exc:
        current = exc.details.get("current")
        if exc.reason is Reason.WRONG_STATE and isinstance(current, str) and current in VM_STATUS:
            exc.message = f"cannot {doing} VM {vm.name}: it is {VM_STATUS[current]}"
            exc.details["current"] = VM_STATUS[current]
            if exc.details.get("required") is not None:
                exc.details["required"] = _volant_states(exc.details["required"])
        else:
            exc.message = exc.message.replace(vm.id, vm.name)
        exc.args = (exc.message,)
        raise


def deployment(row: Row[Any], ready: int) -> dict[str, Any]:
    return {
        "name": row.name,
        "desired_replicas": row.replicas,
        "ready_replicas": ready,
        "config": row.config,
        "created_at": clock.rfc3339(row.created_at),
        "updated_at": clock.rfc3339(row.updated_at),
    }
