"""Making sure a template's image is on the node a VM goes to, once per node."""

from pathlib import Path

from ...drivers.base import TemplateFiles
from ...errors import VmplaneError
from ...store import templates as tpl_q
from ..engine import TaskContext


async def ensure_image(
    ctx: TaskContext, node_id: str, template_id: str | None
) -> tuple[str | None, dict[str, str] | None]:
    """Make the template's files usable on `node_id` if they are not yet (a node of another
    host fetches them, verified by checksum: `HypervisorDriver.provide_template`).

    Returns the image's path and, for kernel-boot templates, their kernel/initrd/cmdline, as
    the node sees them.
    """
    if template_id is None:
        return None, None
    deps = ctx.deps
    known = deps.registry.images_on[node_id]
    if template_id in known:
        return known[template_id]
    async with deps.store.read() as conn:
        tpl = await tpl_q.get_template(conn, template_id)
    if tpl is None or tpl.image_path is None:
        raise VmplaneError(f"template {template_id} has no image")

    async def report(_pct: int, message: str) -> None:
        ctx.log(message)

    files = TemplateFiles(template_id, Path(tpl.image_path), tpl.boot, tpl.checksum, tpl.source_url)
    known[template_id] = await deps.registry.driver(node_id).provide_template(files, report)
    return known[template_id]
