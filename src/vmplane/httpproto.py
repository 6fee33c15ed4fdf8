"""The HTTP/1.1 protocol every listener of vmplane gives uvicorn (the control plane's, its
faces' own, the node agent's): uvicorn's, with a deadline on each request's headers."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers: from the
    connection (or the end of the previous response on a kept-alive one) to the end of the
    headers, at most `header_timeout` seconds, else 408 and the connection is closed. uvicorn
    has an idle keep-alive timeout only, which the first byte of a request disarms: a client
    sending a byte every few seconds held its connection for ever. (The body's deadline is
    api/middleware.BodyLimit's.)"""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None
        self._arm_header_timer()

    # One timer per connection at most, not one per request: a request's headers set or clear
    # the deadline, and the timer, when it fires, acts on the deadline then (arming and
    # cancelling a timer per request was a few µs of every kept-alive request, measured in
    # bench/floor.py's profile of the single GET).

    def _arm_header_timer(self) -> None:
        self._header_deadline = self.loop.time() + self.header_timeout
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(self._header_deadline, self._check_headers)

    def _disarm_header_timer(self) -> None:
        self._header_deadline = None

    def _check_headers(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        if deadline is None:
            return  # a request is being answered; its end arms the deadline again
        if self.loop.time() < deadline:
            self._header_timer = self.loop.call_at(deadline, self._check_headers)
            return
        self._headers_too_slow()

    def _headers_too_slow(self) -> None:
        if not self.transport.is_closing():
            body = b"the request headers did not arrive in time"
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.pipeline and not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None
        super().connection_lost(exc)


def header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The HTTP protocol class to give uvicorn (`Config(http=...)`) for a `seconds` deadline."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})
