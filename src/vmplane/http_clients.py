"""How vmplane builds an HTTP client: one builder for each kind of connection it makes.

- **A URL a user gave** (template and plugin images, an OpenAPI document outside the guest,
  imports, vSphere endpoints, webhooks): `outbound.async_client` / `outbound.sync_client`, or
  `Outbound.client` for the control plane's own policy. Every request is checked against the
  outbound policy and pinned to the checked address; those builders live with the policy, in
  outbound.py, and nothing here bypasses them.
- **One of vmplane's own links** (`link_client`): to an address vmplane chose itself, carrying
  vmplane's credentials or none: the control plane to a node agent (the remote driver, with
  the node's key), an agent to the control plane (with its node credential), the control
  plane to a VM's workload through the port its node forwards. Nothing is taken from the
  environment (no proxy, no .netrc credentials, no certificate settings) and no redirect is
  followed: a link goes where vmplane sent it or fails.
- **A user's tool talking to a vmplane server** (`api_client`, `async_api_client`): the CLI
  and `vmplane mcp`, with an API key as `X-API-Key`. They run in the user's shell and take
  its proxy and certificate settings, as any command-line HTTP client does.

The one other client in the tree, app.py's replay of a schedule's request through the ASGI
app itself (the schedules service's Replay port), makes no connection at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


def link_client(
    *, base_url: str = "", headers: Mapping[str, str] | None = None, timeout: float | httpx.Timeout,
    limits: httpx.Limits | None = None, transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:  # fmt: skip
    """A client for one of vmplane's own links: nothing from the environment, no redirects
    followed. `transport` is for tests (an in-process agent); `limits` defaults to httpx's."""
    extra: dict[str, Any] = {}
    if limits is not None:
        extra["limits"] = limits
    if transport is not None:
        extra["transport"] = transport
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, follow_redirects=False, trust_env=False, **extra)


def _api_headers(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


def api_client(url: str, key: str | None, *, timeout: float | httpx.Timeout) -> httpx.Client:
    """A blocking client of the vmplane server at `url` (the CLI), sending `key` (if any) as
    `X-API-Key`; the environment's proxy and certificate settings apply."""
    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=_api_headers(key))


def async_api_client(url: str, key: str | None, *, timeout: float | httpx.Timeout) -> httpx.AsyncClient:
    """The asynchronous twin of `api_client` (`vmplane mcp`)."""
    return httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, headers=_api_headers(key))


__all__ = ["api_client", "async_api_client", "link_client"]
