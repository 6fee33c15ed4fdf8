"""`vmplane vm ssh` refuses a VM that is not running, naming its state and the way out: its
forwarded port is no guest's then (another program may hold it). Against a sim server."""

from ..support import Server
from .test_cli import cli


async def test_vm_ssh_on_a_vm_that_is_not_running_names_its_state(server: Server) -> None:
    job = await server.create({"name": "web", "start": False})
    assert job["state"] == "succeeded", job
    code, out, err = await cli(server, "vm", "ssh", "web")
    assert (code, out) == (1, "") and "web is stopped; start it with `vmplane vm start web`" in err, err
    # the console's answer is the same, from the server
    code, out, err = await cli(server, "vm", "console", "web")
    assert code == 1 and "web is stopped; start it with `vmplane vm start web`" in err, err
