"""The one way vmplane reaches a URL on a user's behalf (template and plugin images, a plugin's
OpenAPI document, imports of every source type, vSphere endpoints and their lease URLs,
webhooks): the host is resolved, each address is checked against the outbound policy, and the
connection goes to the address that was checked.

The policy (`Policy.refusal`) refuses loopback, link-local (cloud metadata services answer at
169.254.169.254 and fe80::/10), private, carrier-grade NAT, multicast, unspecified, broadcast
and reserved addresses, the IPv6 forms that carry one of those (IPv4-mapped, NAT64, 6to4), and
the addresses of vmplane's own node agents, unless `VMPLANE_OUTBOUND_ALLOW` names them.
Clients made here check every request they send, each redirect included (the check sits in
the transport), connect to the checked address with the URL's host kept for `Host`, TLS SNI
and certificate checks, take no proxy or credentials from the environment, and come with
helpers that stop reading past a byte cap. A refusal names the host, the address and the
reason, never anything the server answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .errors import InvalidRequest, Reason, VmplaneError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_HINT = "an operator can allow it with VMPLANE_OUTBOUND_ALLOW"
AGENT_CACHE_SECONDS = 10.0
AgentUrls = Callable[[], Awaitable[Iterable[tuple[str, str]]]]
"""(node id, advertised URL) of each node run by an agent, as the store knows them now"""
MAX_REDIRECTS = 5

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RESERVED = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "64:ff9b:1::/48", "3fff::/20"))
"""special-purpose ranges this Python's `ipaddress` does not know as such"""
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Refused(VmplaneError):
    """The outbound policy refuses to connect to where a URL leads."""

    reason = Reason.OUTBOUND_REFUSED


class TooLarge(VmplaneError):
    """A fetched body is larger than its cap; nothing past the cap was read."""

    reason = Reason.BODY_TOO_LARGE


def embedded_ipv4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and leads to (IPv4-mapped, NAT64, 6to4)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def classify(ip: IP) -> str | None:
    """Why vmplane does not connect to `ip` on a user's behalf ("a loopback address"), or None
    for an address on the public internet. A pure function of the address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = classify(inner)
        return f"the IPv6 form of {inner}, {why}" if why else None
    if ip.is_unspecified:
        return "an unspecified address (it reaches this host)"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_multicast:
        return "a multicast address"
    if ip == _BROADCAST:
        return "the broadcast address"
    if ip in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if any(ip in n for n in _PRIVATE):
        return "a private address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved or ip.is_private or not ip.is_global or any(ip in n for n in _RESERVED):
        return "a reserved address (not a public internet address)"
    return None


def parse_allow(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (a bare address is a /32 or /128) -> networks; ValueError naming a bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{v!r} is not an address or CIDR: {exc}") from None
    return tuple(out)


@dataclass(frozen=True)
class Policy:
    """What vmplane may connect to: refused classes of address, the node agents' addresses,
    and the operator's allow-list that overrides both."""

    allow: tuple[Network, ...] = ()
    agents: Mapping[IP, str] = field(default_factory=dict)
    """address -> the node whose agent is there"""

    def allowed(self, ip: IP) -> bool:
        inner = embedded_ipv4(ip)
        return any(ip in n or (inner is not None and inner in n) for n in self.allow)

    def refusal(self, ip: IP) -> str | None:
        """Why `ip` is refused, or None when vmplane may connect to it."""
        if self.allowed(ip):
            return None
        why = classify(ip)
        if why is not None:
            return why
        inner = embedded_ipv4(ip)
        node = self.agents.get(ip) or (self.agents.get(inner) if inner is not None else None)
        if node is not None:
            return f"the address of the agent of vmplane node {node}"
        return None

    def explain(self, host: str, ip: IP) -> str | None:
        """The refusal as a sentence naming the host and the address, or None."""
        why = self.refusal(ip)
        if why is None:
            return None
        where = f"{ip} is" if _literal(host) is not None else f"{host} resolves to {ip},"
        return f"{where} {why}; {ALLOW_HINT}"


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def lookup(host: str, port: int) -> list[IP]:
    """Every address `host` resolves to, in the resolver's order (a literal is itself).
    socket.gaierror when it does not resolve."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    seen: list[IP] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


async def alookup(host: str, port: int) -> list[IP]:
    if _literal(host) is not None:
        return lookup(host, port)
    return await asyncio.get_running_loop().run_in_executor(None, lookup, host, port)


def choose(policy: Policy, host: str, addresses: list[IP]) -> IP:
    """The address to connect to: the first one, once every address `host` resolved to has
    passed the policy (Refused otherwise: a name that also leads inside is refused whole)."""
    if not addresses:
        raise Refused(f"{host} resolves to no address")
    for ip in addresses:
        reason = policy.explain(host, ip)
        if reason is not None:
            raise Refused(reason, host=host, address=str(ip))
    return addresses[0]


def _host(url: httpx.URL) -> str:
    """The URL's host as DNS and TLS know it (IDNA-encoded; an IPv6 literal without brackets)."""
    return url.raw_host.decode("ascii")


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _pinned(request: httpx.Request, ip: IP) -> httpx.Request:
    """`request` sent to `ip`: its Host header (set from the URL by httpx) stays, and TLS names
    and verifies the URL's host."""
    host = _host(request.url)
    extensions = dict(request.extensions)
    if request.url.scheme == "https" and _literal(host) is None:
        extensions.setdefault("sni_hostname", host)
    return httpx.Request(request.method, request.url.copy_with(host=str(ip)), headers=request.headers, stream=request.stream, extensions=extensions)


PolicySource = Policy | Callable[[], Awaitable[Policy]]


class PinnedAsyncTransport(httpx.AsyncHTTPTransport):
    """Every request it sends goes to an address the policy passed, looked up once for it."""

    def __init__(self, policy: PolicySource, **kw: Any) -> None:
        super().__init__(trust_env=False, **kw)
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self._policy if isinstance(self._policy, Policy) else await self._policy()
        host = _host(request.url)
        try:
            addresses = await alookup(host, _default_port(request.url))
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc})", request=request) from None
        return await super().handle_async_request(_pinned(request, choose(policy, host, addresses)))


class PinnedTransport(httpx.HTTPTransport):
    """The blocking twin of PinnedAsyncTransport (vSphere downloads run in worker threads)."""

    def __init__(self, policy: Policy, **kw: Any) -> None:
        super().__init__(trust_env=False, **kw)
        self._policy = policy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = _host(request.url)
        try:
            addresses = lookup(host, _default_port(request.url))
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc})", request=request) from None
        return super().handle_request(_pinned(request, choose(self._policy, host, addresses)))


def async_client(policy: PolicySource, *, timeout: float | httpx.Timeout = 30.0, verify: bool = True) -> httpx.AsyncClient:
    """A client whose every request is checked and pinned; it follows no redirect itself
    (`opened` does, each hop checked, no redirect body read); no proxy, .netrc or certificate
    settings are taken from the environment."""
    return httpx.AsyncClient(transport=PinnedAsyncTransport(policy, verify=verify), timeout=timeout, follow_redirects=False, trust_env=False)


def sync_client(policy: Policy, *, timeout: float | httpx.Timeout = 30.0, verify: bool = True) -> httpx.Client:
    return httpx.Client(transport=PinnedTransport(policy, verify=verify), timeout=timeout, follow_redirects=False, trust_env=False)


@asynccontextmanager
async def opened(
    client: httpx.AsyncClient, method: str, url: str, *, headers: Mapping[str, str] | None = None, content: bytes | None = None,
    redirects: int = MAX_REDIRECTS, timeout: float | httpx.Timeout | None = None,
) -> AsyncIterator[httpx.Response]:  # fmt: skip
    """The streamed response to `method url`, following up to `redirects` redirects (0: none,
    a redirect is then the answer); each hop goes through the client's transport, so it is
    checked again, and httpx drops credentials on a hop to another origin. Closed on exit;
    its body is read only by the caller (with a cap)."""
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    request = client.build_request(method, url, headers=headers, content=content, **extra)
    hops = 0
    while True:
        resp = await client.send(request, stream=True)
        if resp.next_request is None or redirects == 0:
            break
        await resp.aclose()
        hops += 1
        if hops > redirects:
            raise httpx.TooManyRedirects(f"more than {redirects} redirects", request=request)
        request = resp.next_request
    try:
        yield resp
    finally:
        await resp.aclose()


def describe(exc: httpx.HTTPError) -> str:
    """What went wrong with a request, in words of vmplane's own: a protocol error's message
    can quote what the server sent (h11 repeats a bad status line), so none is passed on."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, (httpx.ConnectError, httpx.TooManyRedirects, httpx.UnsupportedProtocol)):
        return str(exc) or type(exc).__name__  # the OS's words, the resolver's, or vmplane's
    if isinstance(exc, (httpx.ProtocolError, httpx.DecodingError)):
        return f"the server did not answer in valid HTTP ({type(exc).__name__})"
    return type(exc).__name__


# -- byte caps ---------------------------------------------------------------------------------


def _announced(resp: httpx.Response, limit: int, what: str) -> None:
    length = resp.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"{what} is {int(length)} bytes, more than the {limit} vmplane accepts")


def _over(limit: int, what: str) -> TooLarge:
    return TooLarge(f"{what} is more than the {limit} bytes vmplane accepts; the download was stopped")


async def aiter_limited(resp: httpx.Response, limit: int, what: str, chunk_size: int | None = None) -> AsyncIterator[bytes]:
    """The body of a streamed response, chunk by chunk; TooLarge once it passes `limit` bytes
    (or at once when its Content-Length says it will)."""
    _announced(resp, limit, what)
    done = 0
    async for chunk in resp.aiter_bytes(chunk_size):
        done += len(chunk)
        if done > limit:
            raise _over(limit, what)
        yield chunk


def iter_limited(resp: httpx.Response, limit: int, what: str, chunk_size: int | None = None) -> Iterator[bytes]:
    _announced(resp, limit, what)
    done = 0
    for chunk in resp.iter_bytes(chunk_size):
        done += len(chunk)
        if done > limit:
            raise _over(limit, what)
        yield chunk


async def read_limited(resp: httpx.Response, limit: int, what: str) -> bytes:
    """The whole body of a streamed response, at most `limit` bytes (TooLarge beyond)."""
    return b"".join([chunk async for chunk in aiter_limited(resp, limit, what)])


# -- the control plane's policy ------------------------------------------------------------------


def url_host(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, None for anything else."""
    try:
        p = urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            return None
        return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        return None


class Outbound:
    """rt.outbound: the policy of this control plane (its allow-list, its node agents) and
    clients that follow it."""

    def __init__(self, settings: Any, agent_urls: AgentUrls | None = None) -> None:
        """`agent_urls`: where the node agents are (the store's `nodes.agent_urls_of`); None:
        no agents to keep requests away from."""
        self.allow = parse_allow(settings.outbound_allow)
        self.max_download_bytes = int(settings.max_download_bytes)
        self.max_document_bytes = int(settings.max_document_bytes)
        self.agent_urls = agent_urls
        self._agents: tuple[float, dict[IP, str]] | None = None

    async def _agent_addresses(self) -> dict[IP, str]:
        """The addresses of the node agents the store knows (their advertised URLs resolved),
        kept for AGENT_CACHE_SECONDS."""
        if self.agent_urls is None:
            return {}
        if self._agents is not None and time.monotonic() - self._agents[0] < AGENT_CACHE_SECONDS:
            return self._agents[1]
        out: dict[IP, str] = {}
        for node_id, agent_url in await self.agent_urls():
            where = url_host(agent_url)
            if where is None:
                continue
            try:
                for ip in await alookup(*where):
                    out.setdefault(ip, node_id)
            except (OSError, UnicodeError):
                continue  # an agent whose name no longer resolves is reached by nobody
        self._agents = (time.monotonic(), out)
        return out

    async def policy(self) -> Policy:
        return Policy(self.allow, await self._agent_addresses())

    async def check(self, url: str, field: str) -> None:
        """At request time: InvalidRequest naming `field` when an http(s) `url` leads somewhere
        the policy refuses. A host that does not resolve now passes (the fetch says so later);
        other schemes are not this check's business."""
        where = url_host(url)
        if where is None:
            return
        try:
            addresses = await alookup(*where)
        except (OSError, UnicodeError):
            return
        policy = await self.policy()
        for ip in addresses:
            reason = policy.explain(where[0], ip)
            if reason is not None:
                raise InvalidRequest(f"{field}: {reason}", field=field)

    def client(self, *, timeout: float | httpx.Timeout = 30.0, verify: bool = True) -> httpx.AsyncClient:
        """A client checking each request against the policy as it stands at that request."""
        return async_client(self.policy, timeout=timeout, verify=verify)


def named_tls_context(server_name: str, insecure: bool) -> ssl.SSLContext:
    """A client TLS context that names and verifies `server_name` whatever address the socket
    was opened to (for libraries that open their own connections, such as pyvmomi, given the
    checked address as their host)."""

    class _Named(ssl.SSLContext):
        def wrap_socket(self, sock: Any, *args: Any, **kw: Any) -> Any:
            kw["server_hostname"] = server_name
            return super().wrap_socket(sock, *args, **kw)

    ctx = _Named(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_default_certs()
    return ctx


__all__ = [
    "ALLOW_HINT", "Outbound", "PinnedAsyncTransport", "PinnedTransport", "Policy", "Refused", "TooLarge", "aiter_limited",
    "alookup", "async_client", "choose", "classify", "describe", "iter_limited", "lookup", "named_tls_context", "opened", "parse_allow",
    "read_limited", "sync_client",
]  # fmt: skip
