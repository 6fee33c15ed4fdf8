"""Contract tests generated from Volant's OpenAPI document (schemathesis) against a running
server, with real VM and deployment names to work on: no 5xx, no answer the document does not
allow (status, schema, content type, the Allow header of 405), and schema-violating requests
refused.

Not checked: `positive_data_acceptance` — vmplane refuses some requests the document allows,
on purpose (a VM needs a name; names are 1-63 letters, digits and '-'; a start of a running
VM; VFIO work on devices this host does not have or offer). Left out of the run: the SSE
stream (it never ends; tests/api/test_volant.py reads it) and MCP (another test's subject)."""

from pathlib import Path

import httpx
import pytest

from ..support_fuzz import fuzz_server

pytestmark = pytest.mark.slow

CONTRACT = Path(__file__).parents[2] / "src/vmplane/api/compat/volant/openapi.json"

CONFIG = """
[dictionaries.vms]
values = {vms}
[dictionaries.deployments]
values = {deployments}

[[operations]]
include-path-regex = "^/api/v1/vms/"
parameters = {{ "path.name" = {{ dictionary = "vms", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/api/v1/deployments/"
parameters = {{ "path.name" = {{ dictionary = "deployments", probability = 0.8 }} }}

# the coverage phase makes ~900 cases of the deep Config schema for each of these two (~100 s
# of generation); the fuzzing phase still sends them valid and invalid bodies
[[operations]]
include-operation-id = "createVM"
phases.coverage.enabled = false

[[operations]]
include-operation-id = "createDeployment"
phases.coverage.enabled = false

[[operations]]
include-path = "/api/v1/events/vms"
enabled = false

[[operations]]
include-path = "/api/v1/mcp"
enabled = false
"""


def test_schemathesis_finds_no_contract_violations(tmp_path: Path) -> None:
    with fuzz_server(tmp_path) as server:
        url = f"{server.url}/compat/volant"
        with httpx.Client(base_url=url, headers={"X-Volant-API-Key": server.key}, timeout=30) as c:
            vms = [c.post("/api/v1/vms", json={"name": f"seed-{i}", "memory_mb": 256}).json()["name"] for i in range(3)]
            deployments = [c.post("/api/v1/deployments", json={"name": f"dep-{i}", "replicas": 1}).json()["name"] for i in range(2)]
        server.run(CONTRACT, url, "--checks", "all", "--exclude-checks", "positive_data_acceptance", examples=5,
                   config=CONFIG.format(vms=vms, deployments=deployments).replace("'", '"'))  # fmt: skip
