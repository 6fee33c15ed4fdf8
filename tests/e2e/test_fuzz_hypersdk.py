"""Contract tests generated (schemathesis) from the OpenAPI document vmplane wrote for the
HyperSDK face (src/vmplane/api/compat/hypersdk/openapi.yaml; the contract itself is markdown)
against a running server, with real job and schedule ids to work on: no 5xx, no answer the
document does not allow (status, schema, content type), credentials enforced, and
schema-violating requests refused.

Not checked: `positive_data_acceptance` — job definitions the schema allows are refused when
they name no VM or no vCenter, or a local file outside the import directories; a cron field
the schema cannot describe. vCenter addresses and webhook URLs are drawn from closed
loopback ports only: the fuzzer must not wait on hosts that never answer (nor make the server
look up names it made up: a webhook's URL is resolved when it is added)."""

from pathlib import Path

import httpx
import pytest

from ..support import free_port
from ..support_fuzz import fuzz_server

pytestmark = pytest.mark.slow

CONTRACT = Path(__file__).parents[2] / "src/vmplane/api/compat/hypersdk/openapi.yaml"

CONFIG = """
[dictionaries.jobs]
values = {jobs}
[dictionaries.schedules]
values = {schedules}
[dictionaries.vcenters]
values = {vcenters}
[dictionaries.urls]
values = {urls}

[[operations]]
include-path-regex = "^/jobs/(progress/)?[{{]id[}}]$"
parameters = {{ "path.id" = {{ dictionary = "jobs", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/schedules/[{{]id[}}]"
parameters = {{ "path.id" = {{ dictionary = "schedules", probability = 0.8 }} }}

[[operations]]
include-path-regex = "^/vms/"
parameters = {{ "body.vcenter_url" = {{ dictionary = "vcenters", probability = 1.0 }}, "body.server" = {{ dictionary = "vcenters", probability = 1.0 }}, "query.vcenter_url" = {{ dictionary = "vcenters", probability = 1.0 }}, "query.server" = {{ dictionary = "vcenters", probability = 1.0 }} }}

[[operations]]
include-path-regex = "^/webhooks(/test)?$"
parameters = {{ "body.url" = {{ dictionary = "urls", probability = 1.0 }} }}
"""


def test_schemathesis_finds_no_contract_violations(tmp_path: Path) -> None:
    with fuzz_server(tmp_path) as server:
        url = f"{server.url}/compat/hypersdk"
        closed = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        with httpx.Client(base_url=url, headers={"X-API-Key": server.key}, timeout=30) as c:
            jobs = [c.post("/jobs/submit", json={"vm_path": f"DC/vm/seed-{i}", "vcenter_url": closed[0], "username": "u"}).json()["job_id"]
                    for i in range(2)]  # fmt: skip
            for sid in ("nightly", "weekly"):
                r = c.post("/schedules", json={"id": sid, "schedule": "0 2 * * *", "job_template": {"vm_path": "DC/vm/x", "vcenter_url": closed[0], "username": "u"}})
                assert r.status_code == 201, r.text
        config = CONFIG.format(jobs=jobs, schedules=["nightly", "weekly"], vcenters=closed, urls=[f"http://{c}/hook" for c in closed])
        server.run(CONTRACT, url, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                   config=config.replace("'", '"'))  # fmt: skip
