"""What a slow or hostile client may not do to the service: the read deadlines uvicorn lacks, and
escaping of what reaches the log.

uvicorn has a keep-alive timeout (idle between requests) and a graceful-shutdown timeout, but no
deadline for reading a request: a client that sends half its headers, or half its body, holds a
connection (and, for a body, an ASGI task that delays shutdown) for as long as it likes. So:

- `header_deadline_protocol(s)`: uvicorn's httptools protocol with a deadline for the request line
  and headers, counted from the connection (or the request's first byte) to the end of the
  headers; past it the client gets a 408 and the connection closes. A response sent before its
  request's body was read in full closes the connection too (otherwise a client dribbling a body
  after the response holds it: every byte would cancel uvicorn's keep-alive timer).
- `BodyDeadline`: an ASGI middleware giving the whole body a deadline, counted from the end of
  the headers; past it the endpoint's body read raises a 408 (`Connection: close`).

Both are deadlines for the whole read, not per chunk: a client sending one byte a second gets no
longer than one sending nothing.
"""
from __future__ import annotations

import asyncio
import time
import unicodedata

from fastapi import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _raw_408(seconds: float) -> bytes:
    msg = f"request headers not received within {seconds:g} s".encode("ascii")
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(msg)).encode("ascii") + b"\r\n\r\n" + msg)


class _HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer = None
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # nothing of ours is being written
            self.transport.write(_raw_408(self.header_timeout_s))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self.transport.close()  # answered before its body was read: the rest is not wanted

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's `http=` protocol class, with that deadline for each request's headers."""
    return type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


class BodyDeadline:
    """The request body must be in within `timeout_s` of the request reaching the app: the body
    read past that raises a 408 that FastAPI answers (its body reading passes HTTPExceptions on)."""

    def __init__(self, app, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.timeout_s
        body_done = False

        async def receive_by_deadline():
            nonlocal body_done
            if body_done:  # later calls wait for the disconnect: not ours to bound
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise HTTPException(408, detail=f"request body not received within {self.timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, receive_by_deadline, send)


def escape_for_log(text: str, limit: int = 300) -> str:
    """`text` as one safe log line: control, format, line-separator and unencodable characters
    (CR, LF, NUL, ANSI escapes, U+2028, lone surrogates) as \\x.., \\u.. escapes; cut at `limit`."""
    out = []
    for ch in text[:limit]:
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp") or ch == "\\":
            out.append(ch.encode("unicode_escape").decode("ascii") if ch != "\\" else "\\\\")
        else:
            out.append(ch)
    if len(text) > limit:
        out.append(f"...(+{len(text) - limit} chars)")
    return "".join(out)
