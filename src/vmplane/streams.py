"""How many event streams and consoles each credential and each organization holds open.

Every long-lived stream a caller opens (SSE and WebSocket event streams of every face,
HyperSDK's `/ws`, consoles) holds one slot of its credential (`Principal.limit_key`: an API
key, or a JWT's organization and subject) and one of its organization while it is open; the
one over `VMPLANE_MAX_STREAMS_PER_CREDENTIAL` or `VMPLANE_MAX_STREAMS_PER_ORG` is refused
(RateLimited, 429) before it opens. A slot is released when its stream ends, however it ends
(the client leaves, the stream is dropped, the server shuts down):

    with rt.streams.hold(who):
        ...serve the stream...
"""

from collections import Counter
from typing import Any

from .auth import Principal
from .errors import RateLimited


class StreamSlot:
    """One open stream's hold on its credential's and organization's slots; released once."""

    def __init__(self, limits: "StreamLimits", credential: str, org_id: str) -> None:
        self._limits, self.credential, self.org_id = limits, credential, org_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._drop(self.credential, self.org_id)

    def __enter__(self) -> "StreamSlot":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()


class StreamLimits:
    def __init__(self, per_credential: int, per_org: int) -> None:
        self.per_credential, self.per_org = per_credential, per_org
        self.by_credential: Counter[str] = Counter()
        self.by_org: Counter[str] = Counter()

    def hold(self, who: Principal) -> StreamSlot:
        """A slot for one more stream of `who`; RateLimited (429) if its credential or its
        organization has as many open as it may."""
        return self.hold_for(who.limit_key, who.org_id)

    def hold_for(self, cred: str, org_id: str) -> StreamSlot:
        """The same, for a credential known by its `limit_key` (a console token's holder)."""
        if self.by_credential[cred] >= self.per_credential:
            raise RateLimited(
                f"too many open event streams and consoles for this credential (at most {self.per_credential}); close one first",
                limit=self.per_credential,
            )
        if self.by_org[org_id] >= self.per_org:
            raise RateLimited(
                f"too many open event streams and consoles for your organization (at most {self.per_org}); close one first",
                limit=self.per_org,
            )
        self.by_credential[cred] += 1
        self.by_org[org_id] += 1
        return StreamSlot(self, cred, org_id)

    def _drop(self, credential: str, org_id: str) -> None:
        for counter, key in ((self.by_credential, credential), (self.by_org, org_id)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    @property
    def open(self) -> int:
        return sum(self.by_org.values())
