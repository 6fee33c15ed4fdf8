"""An uploaded template image is a file in the data dir of the process that received it, so its
template-create task runs there: a replica with another data dir (another `home`) hands the task
back rather than fail on a file it does not have, and the receiving one finishes it."""

import asyncio
import os
import time
from collections.abc import AsyncIterator

from vmplane.store import jobs as job_q

from .conftest import Core


async def _body() -> AsyncIterator[bytes]:
    yield b"\x55" * 4096
    yield b"\x55" * 4096


async def test_an_uploads_task_runs_where_its_file_is(core: Core) -> None:
    core.replicas.home = "home-a"  # the replica that receives the upload
    job_id, tpl_id = await core.templates.upload(_body(), name="up", os_="linux", node_id=None, who=core.owner)
    upload = core.deps.images_dir / f"{tpl_id}.upload"
    assert upload.stat().st_size == 8192

    core.replicas.home = "home-b"  # now the process is "another replica" (its own data dir)
    await core.engine.start(core.deps)
    for _ in range(200):
        async with core.store.read() as conn:
            tasks = await job_q.job_tasks(conn, job_id)
            logs = [r.message for r in await job_q.task_log(conn, tasks[0].id)]
        if any("handed over" in m for m in logs):
            break
        await asyncio.sleep(0.02)
    assert any("handed over" in m for m in logs), logs
    assert upload.exists()  # not taken, not removed: it waits for its own replica
    async with core.store.read() as conn:
        assert (await job_q.get_job(conn, job_id)).state not in ("failed", "succeeded")  # type: ignore[union-attr]

    core.replicas.home = "home-a"
    core.engine.wakeup()
    outcome = await core.jobs.wait(job_id, 20)
    assert outcome.job.state == "succeeded", outcome
    assert not upload.exists()


async def test_half_written_uploads_are_swept_at_start(core: Core) -> None:
    """A server stopped mid-upload leaves `<id>.upload` with no template row: the start-up sweep
    removes it once it has been quiet for two body timeouts; an upload whose template waits for
    its import job stays, and so does one written to just now."""
    core.replicas.home = "home-a"
    _, tpl_id = await core.templates.upload(_body(), name="waiting", os_="linux", node_id=None, who=core.owner)
    waiting = core.deps.images_dir / f"{tpl_id}.upload"
    stray = core.deps.images_dir / "tpl-strayupload.upload"
    stray.write_bytes(b"\0" * 100)
    fresh = core.deps.images_dir / "tpl-arrivingnow.upload"  # perhaps another replica's, still arriving
    fresh.write_bytes(b"\0" * 100)
    old = time.time() - 3 * core.settings.body_timeout_seconds
    for p in (stray, waiting):
        os.utime(p, (old, old))
    assert await core.templates.sweep_uploads() == ("tpl-strayupload.upload",)
    assert not stray.exists() and waiting.exists() and fresh.exists()
