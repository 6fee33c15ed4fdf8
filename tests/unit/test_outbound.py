"""The outbound policy (vmplane/outbound.py): the address classifier over every class (a pure
function: no packet), the allow-list and the node agents' addresses, DNS rebinding (the
connection goes to the address that was checked), redirects checked hop by hop, TLS still
naming and verifying the URL's host, byte caps, and errors that never quote what a server
sent. Every test runs with connections outside loopback turned into errors."""

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from vmplane import outbound
from vmplane.config import Settings
from vmplane.errors import InvalidRequest
from vmplane.outbound import Policy, Refused, TooLarge, classify, parse_allow
from vmplane.services.webhook_delivery import post

from ..support_outbound import PUBLIC, SECRET, FakeDns, Recorder, fake_dns, loopback_only, metadata, recorders  # noqa: F401

LOOP1 = Policy(parse_allow(["127.0.0.1/32"]))

CLASSES = [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"), ("fe80::a9fe:a9fe", "link-local"),
    ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff05::fb", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("255.255.255.255", "broadcast"),
    ("0.1.2.3", "reserved"), ("192.0.2.10", "reserved"), ("198.51.100.1", "reserved"), ("203.0.113.9", "reserved"),
    ("198.18.0.1", "reserved"), ("240.0.0.1", "reserved"), ("192.0.0.8", "reserved"), ("2001:db8::1", "reserved"),
    ("::7f00:1", "reserved"), ("100::1", "reserved"), ("64:ff9b:1::a00:1", "reserved"), ("3fff::1", "reserved"),
    ("fec0::1", "site-local"),
    # IPv6 forms that lead to an IPv4 address are judged by that address
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.1.2.3", "private"),
    ("::ffff:100.64.1.1", "carrier-grade NAT"), ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("64:ff9b::7f00:1", "loopback"), ("2002:a00:1::", "private"), ("2002:7f00:1::1", "loopback"),
]  # fmt: skip


@pytest.mark.parametrize(("address", "kind"), CLASSES)
def test_every_refused_class_of_address_is_named(address: str, kind: str) -> None:
    why = classify(ipaddress.ip_address(address))
    assert why is not None and kind in why, (address, why)
    assert Policy().refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", PUBLIC, "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None
    assert Policy().refusal(ipaddress.ip_address(address)) is None


def test_the_allow_list_overrides_a_class_and_the_agents_but_nothing_else() -> None:
    ip = ipaddress.ip_address
    p = Policy(parse_allow(["10.20.0.0/16", "127.0.0.1", "fd00::/8"]), {ip(PUBLIC): "node-a", ip("10.20.0.5"): "node-b"})
    assert p.refusal(ip("10.20.3.4")) is None and p.refusal(ip("127.0.0.1")) is None and p.refusal(ip("fd00::5")) is None
    assert p.refusal(ip("::ffff:127.0.0.1")) is None  # the IPv6 form of an allowed address is allowed
    assert "private" in str(p.refusal(ip("10.21.0.1"))) and "loopback" in str(p.refusal(ip("127.0.0.2")))
    assert p.refusal(ip(PUBLIC)) == "the address of the agent of vmplane node node-a"  # public, but a node agent's
    assert "node-a" in str(p.refusal(ip(f"::ffff:{PUBLIC}")))
    assert p.refusal(ip("10.20.0.5")) is None  # the operator allowed it by name
    assert p.explain("mirror.example", ip("127.0.0.2")) == (
        "mirror.example resolves to 127.0.0.2, a loopback address; an operator can allow it with VMPLANE_OUTBOUND_ALLOW"
    )
    assert p.explain("127.0.0.2", ip("127.0.0.2")) == "127.0.0.2 is a loopback address; an operator can allow it with VMPLANE_OUTBOUND_ALLOW"


def test_the_setting_parses_and_refuses_a_bad_entry_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().outbound_allow == []
    monkeypatch.setenv("VMPLANE_OUTBOUND_ALLOW", "10.0.0.0/8, 192.168.1.7 ,::1")
    assert parse_allow(Settings().outbound_allow) == tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.7/32", "::1/128"))
    monkeypatch.setenv("VMPLANE_OUTBOUND_ALLOW", '["127.0.0.0/8"]')
    assert Settings().outbound_allow == ["127.0.0.0/8"]
    monkeypatch.setenv("VMPLANE_OUTBOUND_ALLOW", "10.0.0.0/33")
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        Settings()
    assert Settings(outbound_allow=[]).max_download_bytes == 64 << 30 and Settings(outbound_allow=[]).max_document_bytes == 1 << 20


async def test_a_refused_address_is_never_connected_to(loopback_only: list[Any], fake_dns: FakeDns) -> None:
    fake_dns.set("metadata.internal", "169.254.169.254")
    async with outbound.async_client(Policy()) as client:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://metadata.internal/", "http://[fe80::1]/", "http://10.0.0.1:8080/"):
            with pytest.raises(Refused):
                async with outbound.opened(client, "GET", url):
                    pass
    with outbound.sync_client(Policy()) as client, pytest.raises(Refused, match="link-local"):
        client.get("http://metadata.internal/")
    assert loopback_only == []  # refused before any connect, not stopped by the guard


async def test_dns_rebinding_gets_the_checked_address(recorders: Any, fake_dns: FakeDns) -> None:
    """The name answers 127.0.0.1 (allowed) when checked and 127.0.0.2 (refused) afterwards:
    the connection goes to 127.0.0.1, with the name kept as Host; nothing reaches .2."""
    good = recorders("127.0.0.1", body=b"{}")
    evil = _twin(recorders, good.port)
    fake_dns.set("rebind.test", "127.0.0.1", "127.0.0.2")
    async with outbound.async_client(LOOP1) as client:
        async with outbound.opened(client, "GET", f"http://rebind.test:{good.port}/x") as resp:
            assert resp.status_code == 200
    assert good.hits == [("GET", "/x", f"rebind.test:{good.port}")] and evil.hits == []
    assert fake_dns.lookups["rebind.test"] == 1  # looked up once: nothing resolved it again
    with outbound.sync_client(LOOP1) as sync, pytest.raises(Refused, match="127.0.0.2"):
        sync.get(f"http://rebind.test:{good.port}/y")  # a new request looks again: now .2, refused
    assert evil.hits == [] and len(good.hits) == 1


def _twin(recorders: Any, port: int) -> Recorder:
    return recorders("127.0.0.2", port)


async def test_a_name_that_resolves_inside_at_first_is_refused(recorders: Any, fake_dns: FakeDns) -> None:
    good = recorders("127.0.0.1", body=b"{}")
    evil = _twin(recorders, good.port)
    fake_dns.set("flip.test", "127.0.0.2", "127.0.0.1")
    async with outbound.async_client(LOOP1) as client:
        with pytest.raises(Refused, match=r"flip.test resolves to 127.0.0.2, a loopback address"):
            async with outbound.opened(client, "GET", f"http://flip.test:{good.port}/"):
                pass
    assert good.hits == [] and evil.hits == []


async def test_each_redirect_is_checked_and_the_refused_hop_gets_nothing(recorders: Any) -> None:
    inner = recorders("127.0.0.2")
    mirror = recorders("127.0.0.1", status=302, headers={"Location": f"http://127.0.0.2:{inner.port}/latest/meta-data"})
    async with outbound.async_client(LOOP1) as client:
        with pytest.raises(Refused, match="127.0.0.2 is a loopback address"):
            async with outbound.opened(client, "GET", f"{mirror.url}/image.qcow2"):
                pass
        # no redirect followed: the redirect itself is the answer
        async with outbound.opened(client, "GET", f"{mirror.url}/image.qcow2", redirects=0) as resp:
            assert resp.status_code == 302
    assert [h[1] for h in mirror.hits] == ["/image.qcow2", "/image.qcow2"] and inner.hits == []


async def test_redirects_that_pass_are_followed_a_few_times_only(recorders: Any) -> None:
    final = recorders("127.0.0.1", body=b"disk")
    hop = recorders("127.0.0.1", status=301, headers={"Location": f"{final.url}/d"})
    async with outbound.async_client(LOOP1) as client:
        async with outbound.opened(client, "GET", f"{hop.url}/a") as resp:
            assert resp.status_code == 200 and await resp.aread() == b"disk"
    loop = recorders("127.0.0.1", status=302, headers={"Location": "/again"})
    async with outbound.async_client(LOOP1) as client:
        with pytest.raises(httpx.TooManyRedirects):
            async with outbound.opened(client, "GET", f"{loop.url}/again"):
                pass
    assert len(loop.hits) == outbound.MAX_REDIRECTS + 1


async def test_byte_caps_stop_reading(recorders: Any) -> None:
    big = recorders("127.0.0.1", body=b"x" * 300_000)
    async with outbound.async_client(LOOP1) as client:
        async with outbound.opened(client, "GET", big.url) as resp:
            with pytest.raises(TooLarge, match="300000 bytes, more than the 1000"):
                await outbound.read_limited(resp, 1000, "the document")
        async with outbound.opened(client, "GET", big.url) as resp:
            assert len(await outbound.read_limited(resp, 300_000, "the document")) == 300_000
    # a body without a length: cut off once past the cap
    server = await asyncio.start_server(_endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with outbound.async_client(LOOP1) as client:
            async with outbound.opened(client, "GET", f"http://127.0.0.1:{port}/") as resp:
                got = 0
                with pytest.raises(TooLarge, match="more than the 100000 bytes"):
                    async for chunk in outbound.aiter_limited(resp, 100_000, "the image"):
                        got += len(chunk)
                assert got <= 100_000
    finally:
        server.close()


async def _endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    try:
        for _ in range(10_000):  # 80 MB if nobody stopped reading
            writer.write(b"y" * 8192)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def test_errors_never_quote_what_the_server_sent() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(f"SSH-2.0-{SECRET}\r\n{SECRET}\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with outbound.async_client(LOOP1) as client:
            with pytest.raises(httpx.HTTPError) as info:
                async with outbound.opened(client, "GET", f"http://127.0.0.1:{port}/"):
                    pass
        assert SECRET not in outbound.describe(info.value) and "valid HTTP" in outbound.describe(info.value)
        hook = SimpleNamespace(url=f"http://127.0.0.1:{port}/", headers={}, secret="s", timeout_sec=2.0, format="vmplane")
        async with outbound.async_client(LOOP1) as client:
            status, error, _ms = await post(client, hook, "dlv-1", "vm.created", b"{}")  # type: ignore[arg-type]
        assert status is None and error and SECRET not in error
    finally:
        server.close()


async def test_webhook_headers_cannot_replace_host_or_framing(recorders: Any) -> None:
    rcv = recorders("127.0.0.1", body=b"")
    seen: list[dict[str, str]] = []

    async def capture(request: httpx.Request) -> None:
        seen.append(dict(request.headers))

    hook = SimpleNamespace(
        url=f"{rcv.url}/hook", secret="s", timeout_sec=2.0, format="vmplane",
        headers={"Host": "169.254.169.254", "Transfer-Encoding": "chunked", "Connection": "upgrade", "Upgrade": "h2c",
                 "content-length": "0", "X-Team": "blue"},
    )  # fmt: skip
    async with outbound.async_client(LOOP1) as client:
        client.event_hooks["request"] = [capture]
        status, error, _ms = await post(client, hook, "dlv-1", "vm.created", b'{"a":1}')  # type: ignore[arg-type]
    assert (status, error) == (200, None)
    assert rcv.hits == [("POST", "/hook", f"127.0.0.1:{rcv.port}")]
    h = seen[0]
    assert h["host"] == f"127.0.0.1:{rcv.port}" and h["content-length"] == "7" and h["x-team"] == "blue"
    assert "transfer-encoding" not in h and "upgrade" not in h and h["connection"] == "keep-alive"  # httpx's own


async def test_request_time_check_names_the_field(fake_dns: FakeDns) -> None:
    ob = outbound.Outbound(Settings(outbound_allow=[]))
    fake_dns.set("mirror.test", PUBLIC, "10.1.2.3")
    await ob.check("http://mirror.test/x.img", "sourceUrl")  # public now
    with pytest.raises(InvalidRequest) as info:
        await ob.check("http://mirror.test/x.img", "sourceUrl")
    assert info.value.field == "sourceUrl" and info.value.message == (
        "sourceUrl: mirror.test resolves to 10.1.2.3, a private address; an operator can allow it with VMPLANE_OUTBOUND_ALLOW"
    )
    await ob.check("file:///srv/x.img", "sourceUrl")  # other schemes are not its business


async def test_tls_names_and_verifies_the_host_while_connecting_to_the_checked_address(tmp_path: Path, fake_dns: FakeDns) -> None:
    cert, key, ca = _self_signed(tmp_path, "vc.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    fake_dns.set("vc.test", "127.0.0.1")
    fake_dns.set("other.test", "127.0.0.1")
    trust = ssl.create_default_context(cafile=ca)
    try:
        async with httpx.AsyncClient(transport=outbound.PinnedAsyncTransport(LOOP1, verify=trust), trust_env=False) as client:
            r = await client.get(f"https://vc.test:{port}/sdk")
            assert r.status_code == 200 and names == ["vc.test"]
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|match|hostname"):
                await client.get(f"https://other.test:{port}/sdk")  # the certificate is not other.test's
        # the context handed to pyvmomi does the same for a socket opened to the address
        ctx = outbound.named_tls_context("vc.test", insecure=False)
        ctx.load_verify_locations(ca)
        done = threading.Event()

        def blocking() -> None:
            with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: vc.test\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200")
            done.set()

        await asyncio.to_thread(blocking)
        assert done.is_set() and names[-1] == "vc.test"
    finally:
        server.close()


def _self_signed(tmp_path: Path, name: str) -> tuple[str, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path), str(cert_path)


async def test_the_node_agents_addresses_come_from_the_store(tmp_path: Path, fake_dns: FakeDns) -> None:
    """A node agent on a public address is still vmplane's own: refused by address (its
    advertised URL's name resolved), unless the operator's allow-list names it."""
    from vmplane import clock
    from vmplane.store import Store
    from vmplane.store import nodes as node_q

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    await store.open()
    try:
        now = clock.now()
        async with store.write() as conn:
            await node_q.upsert_node(conn, {
                "id": "node-agent0001", "hostname": "hv1", "driver": "qemu", "status": "online", "cpu_total": 8, "ram_mb_total": 8192,
                "disk_gb_total": 100, "labels": {}, "created_at": now, "updated_at": now, "agent_url": "http://hv1.test:8081",
            })  # fmt: skip
        fake_dns.set("hv1.test", PUBLIC)
        fake_dns.set("alias.test", PUBLIC)
        ob = outbound.Outbound(Settings(outbound_allow=[]), node_q.agent_urls_of(store))
        with pytest.raises(InvalidRequest, match=f"sourceUrl: alias.test resolves to {PUBLIC}, the address of the agent of vmplane node node-agent0001"):
            await ob.check("http://alias.test:8081/agent/v1/vms", "sourceUrl")
        with pytest.raises(Refused, match="node-agent0001"):
            async with ob.client() as client, outbound.opened(client, "GET", f"http://{PUBLIC}:22/"):
                pass
        await outbound.Outbound(Settings(outbound_allow=[f"{PUBLIC}/32"]), node_q.agent_urls_of(store)).check(f"http://{PUBLIC}:8081/", "sourceUrl")
    finally:
        await store.close()


async def test_ipv6_addresses_are_pinned_too(fake_dns: FakeDns) -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(answer, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.sockets[0].getsockname()[1]
    fake_dns.set("v6.test", "::1")
    try:
        async with outbound.async_client(Policy(parse_allow(["::1/128"]))) as client:
            async with outbound.opened(client, "GET", f"http://v6.test:{port}/a") as resp:
                assert resp.status_code == 200
            with pytest.raises(Refused, match=r"\[?::1\]? is a loopback address"):
                async with outbound.async_client(Policy()) as strict, outbound.opened(strict, "GET", f"http://[::1]:{port}/b"):
                    pass
        assert len(seen) == 1 and f"host: v6.test:{port}".encode() in seen[0].lower()
    finally:
        server.close()
