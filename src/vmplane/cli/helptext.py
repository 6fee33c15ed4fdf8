"""--help that reads as if a person wrote it: metavars such as NAME, SIZE, SECONDS where typer
would print `<int>`, `<str>`, `<list[str]>`; nothing for a flag (`--wait/--no-wait` says it
all); `NAME...` in the usage line where typer prints `{name}...`.

Applied once to the whole command tree in `main()` (`humanize`), so a new command gets it
without anything to remember; its own `metavar=` still wins.
"""

from typing import Any

from typer.core import TyperArgument, TyperGroup, TyperOption

METAVARS = {
    "cpu": "N", "ram_mb": "SIZE", "disk_gb": "SIZE", "url": "URL", "template": "TEMPLATE", "node": "NODE", "tag": "TAG",
    "to": "NODE", "limit": "N", "count": "N", "since": "EVENT_ID", "timeout": "SECONDS", "linger": "SECONDS",
    "expires": "SECONDS", "state": "STATE", "type_": "TYPE", "status": "STATUS", "port": "PORT", "host": "ADDRESS",
    "data_dir": "DIR", "dest": "DIR", "database_url": "URL", "driver": "DRIVER", "accel": "ACCEL", "sim_nodes": "N",
    "log_level": "LEVEL", "control_plane": "URL", "join_token": "TOKEN", "advertise_url": "URL", "hostname": "NAME",
    "description": "TEXT", "types": "TYPES", "resource": "ID", "identity": "KEY_FILE", "user": "USER", "name": "NAME",
    "kind": "TYPE", "fmt": "FORMAT", "network": "SRC=DST", "login_user": "USER", "new_name": "NEW_NAME",
    "display_name": "TEXT",
}  # fmt: skip
"""option (and argument) parameter names -> their metavar; others: the parameter's name in capitals"""

ARGUMENTS = {"name": "NAME", "vms": "NAME_OR_ID", "job_id": "JOB_ID", "node_id": "NODE_ID", "token_id": "TOKEN_ID", "names": "NAME"}


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None  # --wait/--no-wait, --force: no value to describe
        if self.metavar is not None:
            return self.metavar
        return METAVARS.get(self.name or "", (self.name or "value").upper())  # repeatable ones say so in their help


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name column already says it

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 and not self.display_name_raw.endswith("...") else "")

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 and not name.rstrip("]").endswith("...") else "")


def humanize(cmd: Any) -> Any:
    """Give every parameter of `cmd` and its subcommands a human metavar (in place)."""
    for param in cmd.params:
        if isinstance(param, TyperOption) and type(param) is TyperOption:
            param.__class__ = _Option
        elif isinstance(param, TyperArgument) and type(param) is TyperArgument:
            param.__class__ = _Argument
            if param.metavar is None:
                word = ARGUMENTS.get(param.name or "", (param.name or "arg").upper())
                param.metavar = f"{word}..." if param.nargs != 1 else word
    help_option = cmd.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None and type(option) is TyperOption:
            option.__class__ = _Option
        return option

    cmd.get_help_option = get_help_option
    if isinstance(cmd, TyperGroup):
        for sub in cmd.commands.values():
            humanize(sub)
    return cmd


def walk(cmd: Any, path: tuple[str, ...] = ()) -> Any:
    """Every command path under `cmd` (for the test that reads every --help)."""
    yield path
    if isinstance(cmd, TyperGroup):
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))
