"""Secrets and data at rest (issue 18, item 3), against a real server with a real QEMU node
and a real node agent: the data dirs are private (0700, files 0600), webhook secrets are not
in the database in clear, and no answer that carried a secret is kept for Idempotency-Key
replays. One guest for the module."""

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from vmplane import procfs
from vmplane.services.secrets import SecretBox
from vmplane.store import Store
from vmplane.store.db import MIGRATIONS

from ..support import Server, make_settings, require_qemu, tiny_template
from ..support_agent import RunningAgent, join_token

pytestmark = pytest.mark.slow
shared = pytest.mark.asyncio(loop_scope="module")


class Host:
    def __init__(self, server: Server, agent: RunningAgent, vm_id: str, webhook_secret: str, api_key: str, idem_body: dict[str, Any]) -> None:
        self.server, self.agent, self.vm_id = server, agent, vm_id
        self.webhook_secret, self.api_key, self.idem_body = webhook_secret, api_key, idem_body

    @property
    def data_dir(self) -> Path:
        return Path(self.server.rt.data_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def host(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Host]:
    require_qemu()
    base = tmp_path_factory.mktemp("hostfiles")
    # an existing install from before the rule: a 0755 data dir with a 0644 file in it
    data = base / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    (data / "from-an-old-version.json").write_text("{}")
    os.chmod(data / "from-an-old-version.json", 0o644)
    s = await Server(make_settings(base, driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=5)).start()
    agent: RunningAgent | None = None
    try:
        c = s.client
        tpl = await tiny_template(s)
        job = await s.create({"name": "files", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
        assert job["state"] == "succeeded", job
        vm_id = job["tasks"][0]["resourceId"]
        r = await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "at-rest"})
        assert r.status_code == 202, r.text
        assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
        r = await c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["vm.*"]})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        r = await c.post("/api/v1/api-keys", json={"name": "once"}, headers={"Idempotency-Key": "key-once"})
        assert r.status_code == 201, r.text
        agent = await RunningAgent(s.url, await join_token(c), base / "agent").start()
        yield Host(s, agent, vm_id, secret, r.json()["key"], r.json())
    finally:
        if agent is not None:
            await agent.stop()
        await s.stop()
        for pid, _argv in procfs.processes_mentioning(str(base) + os.sep):  # the guest outlives its server
            procfs.kill(pid)


def _entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    out = [(root, root.lstat())]
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(dirpath) / name
            out.append((p, p.lstat()))
    return out


def _loose(root: Path) -> list[str]:
    """Everything under `root` a user other than vmplane's could open: directories not 0700,
    files with any group or other bit (0600 and read-only 0400 are private), or not owned by
    this process's user."""
    bad = []
    for p, st in _entries(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{p} is a symbolic link")
        elif stat.S_ISDIR(st.st_mode) and mode != 0o700:
            bad.append(f"{p} directory {oct(mode)}")
        elif not stat.S_ISDIR(st.st_mode) and mode & 0o077:
            bad.append(f"{p} {oct(mode)}")
        if st.st_uid != os.geteuid():
            bad.append(f"{p} owned by uid {st.st_uid}")
    return bad


@shared
async def test_the_data_dir_is_0700_and_everything_in_it_private(host: Host) -> None:
    entries = _entries(host.data_dir)
    names = {p.name for p, _ in entries}
    # what the walk covers: the store, the VM's disk, seed, logs and sockets, the snapshot, keys
    for expected in ("vmplane.db", "admin-api-key", "secrets.key", "disk.qcow2", "seed.iso", "serial.log", "qemu.log", "qmp.sock", "qemu.pid"):
        assert expected in names, f"{expected} not found under {host.data_dir}"
    assert any(p.parent.name == "snapshots" and p.suffix == ".qcow2" for p, _ in entries)
    assert _loose(host.data_dir) == []
    assert stat.S_IMODE(host.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((host.data_dir / "from-an-old-version.json").stat().st_mode) == 0o600  # tightened at start


@shared
async def test_the_agent_data_dir_with_its_credential_is_private(host: Host) -> None:
    agent_dir = Path(host.agent.agent.data_dir)
    assert (agent_dir / "agent.json").is_file()  # the node credential
    assert _loose(agent_dir) == []


def _database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("vmplane.db*")))


@shared
async def test_webhook_and_agent_key_secrets_are_not_in_the_database_in_clear(host: Host) -> None:
    assert host.webhook_secret.startswith("whsec_")
    raw = _database_bytes(host.data_dir)
    assert b"webhooks" in raw  # the file read is the store (the WAL included)
    assert host.webhook_secret.encode() not in raw
    assert host.webhook_secret.encode()[6:] not in raw
    r = await host.server.client.get("/api/v1/webhooks")
    assert host.webhook_secret not in r.text  # and no read shows it
    # nor the secret the control plane's keys to agents derive from
    agent_secret = (await host.server.rt.agents._key_secret()).hex()
    assert agent_secret.encode() not in raw


@shared
async def test_an_idempotent_key_creation_replayed_does_not_give_the_key_back(host: Host) -> None:
    c = host.server.client
    before = [k["id"] for k in (await c.get("/api/v1/api-keys")).json()["items"]]
    r = await c.post("/api/v1/api-keys", json={"name": "once"}, headers={"Idempotency-Key": "key-once"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "idempotency_replay_unavailable"
    assert r.json()["details"] == {"status": 201, "id": host.idem_body["id"]}
    assert r.headers.get("idempotent-replayed") == "true" and r.headers.get("cache-control") == "no-store"
    assert host.api_key not in r.text and host.api_key[:14] not in r.text
    assert [k["id"] for k in (await c.get("/api/v1/api-keys")).json()["items"]] == before  # nothing made twice
    async with host.server.rt.store.read() as conn:
        rows = (await conn.execute(sa.text("SELECT body FROM idempotency_keys"))).all()
    assert rows and all(host.api_key not in body for (body,) in rows)
    assert host.api_key.encode() not in _database_bytes(host.data_dir)  # (a key is kept only as a digest)


@shared
async def test_the_other_answers_that_carry_a_secret_are_marked_no_store(host: Host) -> None:
    c = host.server.client
    r = await c.post("/api/v1/orgs", json={"name": "tenant-x", "owner": "alice"}, headers={"Idempotency-Key": "org-x"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    again = await c.post("/api/v1/orgs", json={"name": "tenant-x", "owner": "alice"}, headers={"Idempotency-Key": "org-x"})
    assert again.status_code == 409 and r.json()["ownerKey"] not in again.text
    r = await c.post("/api/v1/nodes/tokens", json={})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    r = await c.post(f"/api/v1/vms/{host.vm_id}/console")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    # an answer without a secret is still replayed as it was
    r1 = await c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/b", "events": ["job.*"]}, headers={"Idempotency-Key": "wh-b"})
    r2 = await c.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/b", "events": ["job.*"]}, headers={"Idempotency-Key": "wh-b"})
    assert r1.status_code == 201 and r2.status_code == 409 and r1.json()["secret"] not in r2.text


async def test_migration_0018_seals_stored_secrets_and_forgets_cached_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a store as 0017 left it
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0017")
        conn.execute(sa.text(
            "INSERT INTO webhooks (id, org_id, url, events, enabled, timeout_sec, retry_count, headers, secret, created_by, created_at, updated_at, format)"
            " VALUES ('whk-old', 'org-default', 'http://x/', '[]', 1, 5, 0, '{}', 'whsec_old-clear-secret', 'admin', 0, 0, 'vmplane')"
        ))  # fmt: skip
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('agent_key_secret', :v)"), {"v": "ab" * 32})
        for key, body in (("with-key", '{"id": "key-1", "key": "vmp_cachedsecret"}'), ("plain", '{"jobId": "job-1"}')):
            conn.execute(sa.text(
                "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, headers, body, created_at)"
                " VALUES ('u@o', :k, 'h', 201, '[]', :b, 0)"
            ), {"k": key, "b": body})  # fmt: skip
    engine.dispose()
    box = SecretBox(tmp_path / "secrets.key")
    store = Store(url, secret_box=box)
    await store.open()
    await store.close()
    raw = (tmp_path / "old.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("old.db-*"))
    assert b"old-clear-secret" not in raw and b"vmp_cachedsecret" not in raw and b"ab" * 32 not in raw
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        (sealed,) = conn.execute(sa.text("SELECT secret FROM webhooks WHERE id = 'whk-old'")).one()
        keys = [k for (k,) in conn.execute(sa.text("SELECT key FROM idempotency_keys"))]
        (agent_secret,) = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'agent_key_secret'")).one()
    engine.dispose()
    assert box.open(sealed) == {"webhookSecret": "whsec_old-clear-secret"}
    assert box.open(agent_secret) == {"agentKeySecret": "ab" * 32}
    assert keys == ["plain"]
