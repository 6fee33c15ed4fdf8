"""Making sure a template's image is on the node a VM goes to, once per node."""

from pathlib import Path

from ...errors import VmplaneError
from ...store import templates as tpl_q
from ..engine import TaskContext


async def ensure_image(
    ctx: TaskContext, node_id: str, template_id: str | None
) -> tuple[str | None, dict[str, str] | None]:
    """Import the template's image on `node_id` if it is not there yet.

    Returns the image's path and, for kernel-boot templates, their kernel/initrd/cmdline.
    """
    if template_id is None:
        return None, None
    rt = ctx.rt
    async with rt.store.read() as conn:
        tpl = await tpl_q.get_template(conn, template_id)
    if tpl is None or tpl.image_path is None:
        raise VmplaneError(f"template {template_id} has no image")
    known = rt.registry.images_on[node_id]
    if template_id not in known:

        async def report(_pct: int, message: str) -> None:
            ctx.log(message)

        await rt.registry.driver(node_id).import_image(template_id, Path(tpl.image_path), report)
        known.add(template_id)
    return tpl.image_path, tpl.boot
