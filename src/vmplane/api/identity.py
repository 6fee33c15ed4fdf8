"""Who is calling: sets `request.state.principal` for the routes and the audit trail.

Until the tenancy issue brings credentials, callers are `anonymous`; requests vmplane makes
to itself (a schedule replaying its request) carry a per-process secret and act as the
schedule's owner.
"""

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

INTERNAL_HEADER = b"x-vmplane-internal"
ACTING_AS_HEADER = b"x-vmplane-acting-as"


def internal_headers(token: str, principal: str) -> dict[str, str]:
    """Headers for a request vmplane makes to itself on behalf of `principal`."""
    return {INTERNAL_HEADER.decode(): token, ACTING_AS_HEADER.decode(): principal}


class Identity:
    def __init__(self, app: ASGIApp, internal_token: str) -> None:
        self.app = app
        self.internal_token = internal_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers", []))
            principal = "anonymous"
            token = headers.get(INTERNAL_HEADER)
            if token is not None and hmac.compare_digest(token, self.internal_token.encode()):
                principal = headers.get(ACTING_AS_HEADER, b"anonymous").decode("utf-8", "replace")
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
