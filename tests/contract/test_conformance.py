"""Every operation of the five contracts is routed on its face's prefix, and the conformance
table of docs/faces.md says how many are: the table cannot go stale, and a route that goes
away fails here.

Operations come from the documents themselves: the paths × methods of the three OpenAPI
documents, the `### METHOD /path` headings of hypersdk-api.md, and the `### **Name**`
headings of cluster-api.md (which names operations but gives no paths: CLUSTER_PATHS maps
them, as docs/api.md does). The compat documents are read from the copies the app serves
(src/vmplane/api/compat/<face>/), cluster-api.md from the copy beside the native face
(src/vmplane/api/native/); where the shared specs directory is at hand (`VMPLANE_SPECS_DIR`,
else a `shared/specs` beside an ancestor of the checkout) the shipped copies are compared
with it.

An operation is served when a request with realistic path parameters (ids of the face's
kinds, for resources that do not exist) is answered neither 405 nor the face's own answer to
a path nobody routes (learned by asking for one): a 404 naming the missing resource is fine.
WebSocket operations are served when the handshake is accepted.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import yaml

from ..support import Server

ROOT = Path(__file__).parents[2]
API = ROOT / "src/vmplane/api"
FACES_DOC = ROOT / "docs/faces.md"
METHODS = ("get", "put", "post", "delete", "patch")

CLUSTER_PATHS = {
    "List VMs": ("GET", "/vms"),
    "Create VMs (bulk)": ("POST", "/vms"),
    "Get VM": ("GET", "/vms/{id}"),
    "Update VM (PATCH)": ("PATCH", "/vms/{id}"),
    "Delete VMs (bulk)": ("DELETE", "/vms"),
    "List Templates": ("GET", "/templates"),
    "Create Template": ("POST", "/templates"),
    "Update Template": ("PATCH", "/templates/{id}"),
    "Delete Templates (bulk)": ("DELETE", "/templates"),
    "List Jobs": ("GET", "/jobs"),
    "Job Details": ("GET", "/jobs/{id}"),
    "Task Details": ("GET", "/jobs/{id}/tasks/{taskId}"),
    "List Nodes": ("GET", "/nodes"),
    "Node Resources": ("GET", "/nodes/{id}/resources"),
    "Cluster Wide Resources": ("GET", "/cluster/resources"),
    "Cluster Details": ("GET", "/cluster"),
}
"""cluster-api.md's operation headings → where the native face serves them (docs/api.md)"""

UUID = "6f1c2a4e-9b3d-4c5e-8f7a-0123456789ab"
PATH_VALUES = {
    "native": {"vms/{id}": "vm-0000000000", "templates/{id}": "tpl-0000000000", "jobs/{id}": "job-0000000000",
               "nodes/{id}": "node-9", "{taskId}": "task-0000000000"},
    "fastvm": {"{id}": UUID},
    "bluelobster": {"{instance_id}": UUID, "{vm_uuid}": UUID, "{task_id}": "job-0000000000", "{team_id}": "team-0000000000",
                    "{ip_address}": "10.0.0.99", "{pos}": "0"},
    "volant": {"{name}": "web-1", "{plugin}": "caddy"},
    "hypersdk": {"jobs/{id}": UUID, "schedules/{id}": "daily-backup", "{index}": "0"},
}  # fmt: skip
"""a realistic value for each path parameter (by the collection before it, where the face's
ids differ by kind): the face's kind of id, of nothing that exists"""


@dataclass(frozen=True)
class Contract:
    file: str
    """the document's name in the specs directory"""
    face: str
    prefix: str
    shipped: str
    """the copy shipped with the code, under src/vmplane/api/"""


CONTRACTS = (
    Contract("cluster-api.md", "native", "/api/v1", "native/cluster-api.md"),
    Contract("fastvm-openapi.yaml", "fastvm", "/compat/fastvm", "compat/fastvm/openapi.yaml"),
    Contract("bluelobster-openapi.json", "bluelobster", "/compat/bluelobster", "compat/bluelobster/openapi.json"),
    Contract("volant-openapi.json", "volant", "/compat/volant", "compat/volant/openapi.json"),
    Contract("hypersdk-api.md", "hypersdk", "/compat/hypersdk", "compat/hypersdk/hypersdk-api.md"),
)


def specs_dir() -> Path | None:
    if os.environ.get("VMPLANE_SPECS_DIR"):
        return Path(os.environ["VMPLANE_SPECS_DIR"])
    for parent in ROOT.parents:
        if (parent / "shared/specs/cluster-api.md").is_file():
            return parent / "shared/specs"
    return None


def document(c: Contract) -> str:
    return (API / c.shipped).read_text()


def operations(c: Contract) -> list[tuple[str, str]]:
    """(METHOD, path template) of every operation the document defines, in its order."""
    text = document(c)
    if c.file.endswith((".yaml", ".json")):
        spec = yaml.safe_load(text)
        return [(m.upper(), path) for path, item in spec["paths"].items() for m in item if m in METHODS]
    if c.file == "hypersdk-api.md":
        return re.findall(r"^### (GET|POST|PUT|PATCH|DELETE|WS) (/\S*)\s*$", text, re.M)
    headings = re.findall(r"^### \*\*(.+?)\*\*\s*$", text, re.M)
    assert sorted(headings) == sorted(CLUSTER_PATHS), "cluster-api.md's operations changed: update CLUSTER_PATHS and docs/api.md"
    return [CLUSTER_PATHS[h] for h in headings]


def conformance_section() -> str:
    text = FACES_DOC.read_text()
    start = text.index("\n## Conformance")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table() -> dict[str, tuple[str, int, int]]:
    """docs/faces.md's conformance table: contract file → (face, operations, served)."""
    rows = re.findall(r"^\| `([\w.-]+)` \| `?(\w+)`? \| (\d+) \| (\d+) \|", conformance_section(), re.M)
    return {file: (face, int(total), int(served)) for file, face, total, served in rows}


def test_the_shipped_copies_are_the_contracts() -> None:
    found = specs_dir()
    if found is None:
        pytest.skip("no specs directory to compare with: set VMPLANE_SPECS_DIR")
    for c in CONTRACTS:
        assert (API / c.shipped).read_bytes() == (found / c.file).read_bytes(), f"{c.shipped} is not {c.file}"


def test_the_table_counts_every_operation_of_every_contract() -> None:
    rows = table()
    assert sorted(rows) == sorted(c.file for c in CONTRACTS), "docs/faces.md's conformance table must have one row per contract"
    for c in CONTRACTS:
        ops = operations(c)
        assert len(set(ops)) == len(ops), f"{c.file}: an operation defined twice"
        face, total, _served = rows[c.file]
        assert (face, total) == (c.face, len(ops)), f"docs/faces.md says {c.file} ({face}) has {total} operations; it has {len(ops)}"


def realistic(c: Contract, template: str) -> tuple[str, list[str]]:
    """The URL of an operation with realistic path parameters, and the values put in."""
    values, used = PATH_VALUES[c.face], []

    def value(m: re.Match[str]) -> str:
        used.append(values.get(m.group(0)) or values[m.group(2)])
        return (m.group(1) or "") + used[-1]

    return c.prefix + re.sub(r"([\w-]+/)?(\{\w+\})", value, template), used


def missing_resource(body: Any, no_route: dict[str, Any], values: list[str]) -> bool:
    """A 404 body is a route's answer for a missing resource when it is in the face's error
    shape, is not the answer to a path nobody routes, and names what the path asked for (a
    path without parameters has nothing to miss: a 404 there is another route's, such as
    `/instances/{instance_id}` answering for `/instances/available`)."""
    if not isinstance(body, dict) or not set(no_route) <= set(body):
        return False
    return without_timestamp(body) != without_timestamp(no_route) and any(v in json.dumps(body) for v in values)


def without_timestamp(body: Any) -> Any:
    return {k: v for k, v in body.items() if k != "timestamp"} if isinstance(body, dict) else body


async def answer(client: httpx.AsyncClient, method: str, url: str) -> tuple[int, Any]:
    """The status and JSON body (None when there is none) of one request; a stream (SSE) is
    not read past its headers."""
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    async with client.stream(method, url, **body) as r:
        if "json" not in r.headers.get("content-type", ""):
            return r.status_code, None
        await r.aread()
        return r.status_code, r.json()


async def ws_served(server: Server, url: str) -> bool:
    try:
        async with websockets.connect(server.url.replace("http", "ws", 1) + url, additional_headers={"X-API-Key": server.admin_key}) as ws:
            json.loads(await ws.recv())  # the face speaks first (hypersdk: status)
            return True
    except websockets.InvalidStatus:
        return False


async def unserved(server: Server, c: Contract) -> list[str]:
    """The contract's operations the face does not route, as `METHOD /path`."""
    status, no_route = await answer(server.client, "GET", c.prefix + "/no-such-route/of-any-contract")
    assert status == 404 and no_route, f"{c.face}: a path nobody routes answered {status} {no_route}"
    missing = []
    for method, template in operations(c):
        url, values = realistic(c, template)
        if method == "WS":
            served = await ws_served(server, url)
        else:
            status, body = await answer(server.client, method, url)
            assert status < 500, f"{c.face}: {method} {url} answered {status} {body}"
            served = status != 405 and (status != 404 or missing_resource(body, no_route, values))
        if not served:
            missing.append(f"{method} {template}")
    return missing


async def test_every_operation_is_served_as_the_table_says(server: Server) -> None:
    rows, section = table(), conformance_section()
    for c in CONTRACTS:
        total = len(operations(c))
        missing = await unserved(server, c)
        face, _total, served = rows[c.file]
        assert served == total - len(missing), (
            f"docs/faces.md says {served} of {c.file}'s operations are served; {total - len(missing)} are (not: {missing})"
        )
        for op in missing:  # what is not served is named, with its reason, until it is
            assert f"`{op}`" in section, f"{c.file}: `{op}` is not served and docs/faces.md does not say so"
