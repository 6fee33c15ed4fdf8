"""What the HyperSDK routers share: an answer with the document's `timestamp`, the origin
that marks the face's own schedules, and the daemon's status (GET /status and /ws's `status`
message)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

from .... import __version__, clock
from ....auth import Principal
from . import jobs as hjobs
from . import wire

if TYPE_CHECKING:
    from ....runtime import Runtime

ORIGIN = "hypersdk"
"""a schedule's `origin.face` when this face made it"""


def ok(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({**data, "timestamp": wire.now()} if "timestamp" not in data else data, status_code=status)


async def status_data(request_app: Any, rt: Runtime, who: Principal) -> dict[str, Any]:
    counts = await hjobs.counts(rt, who)
    uptime = clock.now() - request_app.state.started_at
    return {
        "total_jobs": sum(counts.values()), "pending_jobs": counts["pending"], "running_jobs": counts["running"],
        "completed_jobs": counts["completed"], "failed_jobs": counts["failed"], "cancelled_jobs": counts["cancelled"],
        "worker_count": rt.settings.job_concurrency, "active_workers": rt.engine.running_count,
        "version": __version__, "uptime": wire.go_duration(uptime), "uptime_seconds": int(uptime), "timestamp": wire.now(),
    }  # fmt: skip
