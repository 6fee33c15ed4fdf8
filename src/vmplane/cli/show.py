"""What the CLI prints for people: a job's outcome in the user's words ("web is running"),
readable summaries of a VM and a job, and tables whose ID column is never cut."""

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .units import show_mib

DONE = {
    "vm-create": ("is created", "are created"), "vm-start": ("is running", "are running"), "vm-stop": ("is stopped", "are stopped"),
    "vm-shutdown": ("is shut down", "are shut down"), "vm-reboot": ("rebooted", "rebooted"), "vm-power-cycle": ("restarted", "restarted"),
    "vm-delete": ("deleted", "deleted"), "vm-migrate": ("migrated", "migrated"), "vm-move": ("moved", "moved"),
    "vm-update": ("updated", "updated"), "vm-import": ("imported", "imported"), "vm-revert": ("reverted", "reverted"),
    "vm-restore": ("restored", "restored"), "vm-network": ("reconnected", "reconnected"), "node-drain": ("drained", "drained"),
    "template-create": ("is ready", "are ready"), "template-update": ("updated", "updated"), "template-delete": ("deleted", "deleted"),
    "iso-import": ("is ready", "are ready"),
}  # fmt: skip
"""job type -> what its succeeded tasks made true, said of one and of several"""


DOING = {
    "vm-create": "creating", "vm-start": "starting", "vm-stop": "stopping", "vm-shutdown": "shutting down", "vm-reboot": "rebooting",
    "vm-power-cycle": "restarting", "vm-delete": "deleting", "vm-migrate": "migrating", "vm-move": "moving", "vm-update": "changing",
    "vm-import": "importing", "vm-revert": "reverting", "vm-restore": "restoring", "vm-network": "reconnecting", "node-drain": "draining",
    "template-create": "importing template", "template-update": "updating template", "template-delete": "deleting template",
    "iso-import": "importing ISO",
}  # fmt: skip
"""job type -> what it is doing, for its progress line"""


def job_doing(job: dict[str, Any], names: dict[str, str]) -> str:
    """`creating web and web-2`: a job's progress line, VMs by name (ids it has no name for as they are)."""
    what = [names.get(t["resourceId"], t["resourceId"]) for t in job.get("tasks") or ()]
    verb = DOING.get(job["type"], job["type"])
    return f"{verb} {and_list(what, 3)}" if what else f"{verb} ({job['id']})"


def job_tally(job: dict[str, Any]) -> str:
    """`1/2 done`, `1/2 done, 1 failed`: its tasks so far."""
    tasks = job.get("tasks") or ()
    done = sum(t["state"] == "succeeded" for t in tasks)
    failed = sum(t["state"] in ("failed", "cancelled") for t in tasks)
    return f"{done}/{len(tasks)} done" + (f", {failed} failed" if failed else "")


def and_list(names: Sequence[str], most: int = 6) -> str:
    """`web`, `web and web-2`, `a, b and c`; past `most`: the first ones and how many more."""
    if len(names) > most:
        return f"{', '.join(names[: most - 1])} and {len(names) - most + 1} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def outcome(job: dict[str, Any], names: dict[str, str], started: bool = True) -> str:
    """One line: what the job did, naming VMs by name (`names`: resource id -> name; an id
    it lacks is shown as it is), and which ones failed."""
    tasks = job.get("tasks") or []
    done = [names.get(t["resourceId"], t["resourceId"]) for t in tasks if t["state"] == "succeeded"]
    failed = [names.get(t["resourceId"], t["resourceId"]) for t in tasks if t["state"] in ("failed", "cancelled")]
    one, many = DONE.get(job["type"], ("done", "done"))
    if job["type"] == "vm-create" and started:
        one, many = "is running", "are running"
    parts = []
    if done:
        parts.append(f"{and_list(done)} {one if len(done) == 1 else many}")
    if failed:
        parts.append(f"{and_list(failed)} failed")
    if not tasks:
        parts.append(f"{job['type']} {job['state']}")
    line = "; ".join(parts)
    return line if job["state"] == "succeeded" else f"{line} (job {job['id']} {job['state']})"


def vm_summary(v: dict[str, Any]) -> list[tuple[str, str]]:
    """`vm get` for people: the fields one looks for, as (label, value) lines."""
    r = v["resources"]
    rows = [
        ("name", v["name"] + (f" ({v['displayName']})" if v.get("displayName") and v["displayName"] != v["name"] else "")),
        ("id", v["id"]),
        ("status", v["status"] + (f" for {v['uptime']}" if v.get("uptime") else "") + (", guest ready" if v.get("guestReady") else "")),
        ("node", v.get("node") or "-"),
        ("resources", f"{r['cpu']} vCPU{'s' if r['cpu'] != 1 else ''}, {show_mib(r['ramMb'])} RAM, {r['diskGb']} GiB disk"),
        ("template", v.get("templateId") or ("- (an empty disk)" if v.get("blank") else "-")),
    ]
    if v.get("tags"):
        rows.append(("tags", ", ".join(v["tags"])))
    ssh = v.get("ssh")
    if ssh:
        rows.append(("ssh", f"{ssh['user']}@{ssh['host']} port {ssh['port']} (vmplane vm ssh {v['name']})"))
    addresses = [ip for n in v.get("nics") or () for ip in n.get("ipAddresses") or ()]
    if addresses:
        rows.append(("addresses", ", ".join(addresses)))
    if v.get("expose"):
        rows.append(("exposed", ", ".join(f"{e.get('hostPort')}->{e['port']}/{e.get('protocol', 'tcp')}" for e in v["expose"])))
    if v.get("error"):
        rows.append(("error", v["error"]))
    rows.append(("created", v["createdAt"]))
    return rows


def job_summary(j: dict[str, Any], names: dict[str, str]) -> list[tuple[str, str]]:
    """`job get` for people: the job, then one line per task naming its VM."""
    rows = [
        ("job", f"{j['id']} ({j['type']})"),
        ("state", f"{j['state']}, {j['progress']}%"),
        ("outcome", outcome(j, names)),
        ("created", f"{j['createdAt']} by {j['createdBy']}"),
    ]
    if j.get("finishedAt"):
        rows.append(("finished", j["finishedAt"]))
    for t in j.get("tasks") or ():
        who = names.get(t["resourceId"], t["resourceId"])
        rows.append(("task", f"{who}: {t['state']}" + (f" ({t['progress']}%)" if t["state"] == "running" else "") + (f": {t['error']}" if t.get("error") else "")))
    return rows


def print_fields(console: Console, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        line = Text(f"{label + ':':<{width}}", style="bold")
        line.append(value)  # Text: a name or an error from the server is never markup
        console.print(line, soft_wrap=True)


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str | Text]], drop: Sequence[str] = ()) -> None:
    """A table that fits the terminal without cutting its ID column, the thing to copy: the
    columns in `drop` go first (in that order) when the full table is too wide, then the
    remaining columns other than ID wrap or are cut."""
    keep = list(range(len(headers)))
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(headers)]

    def width(cols: list[int]) -> int:
        return sum(widths[i] for i in cols) + 3 * len(cols) + 1  # "│ x " per column and the last "│"

    for name in drop:
        if width(keep) <= console.width:
            break
        if name in headers:
            keep.remove(headers.index(name))
    table = Table()
    for i in keep:
        if headers[i] == "ID":
            table.add_column(headers[i], no_wrap=True, min_width=widths[i])
        elif headers[i] == "NAME":
            table.add_column(headers[i], overflow="fold")  # the other thing one copies: folded onto more lines, never cut
        else:
            table.add_column(headers[i], overflow="ellipsis", no_wrap=headers[i] not in ("ERROR", "DESCRIPTION"))
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    console.print(table)
