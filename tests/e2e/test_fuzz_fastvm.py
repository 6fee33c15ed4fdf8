"""Contract tests generated from FastVM's OpenAPI document (schemathesis) against a running
server, with real VM and snapshot ids to work on: no 5xx, no answer the document does not
allow (status, schema, content type, headers, the Allow header of 405), credentials enforced,
and schema-violating requests refused.

Not checked: `positive_data_acceptance` — vmplane refuses some requests the document allows,
on purpose (VM names are 1-63 letters, digits and '-'; an empty command; portEnd below
portStart; a plain HTTP GET of the WebSocket endpoint answers 426). docs/fastvm.md lists them.
test_every_documented_status_code_is_reached (tests/api/test_fastvm.py) reaches each
documented status code; the fuzzer cannot (failures of a node, a full node, a quota)."""

from pathlib import Path

import httpx
import pytest

from ..support_fastvm import CONTRACT
from ..support_fuzz import fuzz_server

pytestmark = pytest.mark.slow

CONFIG = """
[dictionaries.vms]
values = {vms}
[dictionaries.snapshots]
values = {snapshots}

[[operations]]
include-path-regex = "^/v1/vms/"
parameters = {{ "path.id" = {{ dictionary = "vms", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/v1/snapshots/"
parameters = {{ "path.id" = {{ dictionary = "snapshots", probability = 0.8 }} }}

[[operations]]
include-path = "/v1/snapshots"
include-method = "POST"
parameters = {{ "body.vmId" = {{ dictionary = "vms", probability = 0.8 }} }}

[[operations]]
include-path = "/v1/vms"
include-method = "POST"
parameters = {{ "body.snapshotId" = {{ dictionary = "snapshots", probability = 0.5 }} }}
"""


def test_schemathesis_finds_no_contract_violations(tmp_path: Path) -> None:
    with fuzz_server(tmp_path) as server:
        url = f"{server.url}/compat/fastvm"
        with httpx.Client(base_url=url, headers={"X-API-Key": server.key}, timeout=30) as c:
            vms = [c.post("/v1/vms", json={"machineType": "c1m2", "name": f"seed-{i}"}).json()["id"] for i in range(3)]
            snapshots = [c.post("/v1/snapshots", json={"vmId": vm}).json()["id"] for vm in vms[:2]]
        server.run(CONTRACT, url, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                   config=CONFIG.format(vms=vms, snapshots=snapshots).replace("'", '"'))  # fmt: skip
