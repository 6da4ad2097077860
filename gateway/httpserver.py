"""The HTTP/1.1 protocol ``expertgate serve`` runs: uvicorn's httptools protocol with a cap on
the size of a request's head (request line + headers).

httptools buffers a header value whole before handing it over, so a cap must act on the bytes
fed to the parser, not on parsed headers: while a request's head is incomplete, at most
``max_header_bytes`` (``EXPERTGATE_MAX_HEADER_BYTES``, default 64 KiB) reach the parser. A
longer head gets an OpenAI-shaped 431; the connection then discards what the client still
sends for a short while before closing (closing at once with unread data would reset the
connection and the client might never read the 431). Memory per connection stays bounded
whatever the client sends. Other malformed requests get an OpenAI-shaped 400 instead of
uvicorn's plain text.

Slow and idle clients are not held forever: a connection must send a request's head within
``header_timeout_s`` (``EXPERTGATE_HEADER_TIMEOUT_S``, 10 s) of opening or of its previous
response, else it gets an OpenAI-shaped 408 and is closed (the body has its own timeout in
the app, ``EXPERTGATE_BODY_TIMEOUT_S``); more than ``max_connections`` open connections
(``EXPERTGATE_MAX_CONNECTIONS``, at most half the process's file-descriptor limit, the other
half kept for upstreams and Redis) get a 503 at once. At shutdown, the first connection told
to finish tells the gateway (``Gateway.begin_drain``), which answers bodies still being read
``_IDLE_DRAIN_S`` later with a 503 instead of waiting for them; a connection idle between
requests stays open that long for one more request (a pooled client may be sending it), then
closes.

Each response goes out in one write: the status line and headers wait for the first body
chunk (:class:`_Cycle`), and a response whose whole body comes with its head gets a
``content-length`` instead of chunked framing. uvicorn writes the head at once, so a small
answer took two writes, each one a loopback TCP send that the kernel processes in the
writer's time (one of the largest per-request costs measured by ``bench overhead``). The
head timer is armed only when a head is actually incomplete or nothing else would end an
idle connection first (uvicorn's keep-alive timer), not once per request.

An HTTP/1.0 client never gets chunked framing, which its version does not have: a stream's
body goes out as it comes and the connection's close ends it (a whole answer has its
``content-length``; a 1.0 connection is never kept alive).
"""

from __future__ import annotations

import asyncio
import functools
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from gateway.errors import error_body

__all__ = ["GatewayHttpProtocol"]

#: after a 431: how long and how much the connection keeps reading (and discarding)
_LINGER_S = 2.0
_LINGER_BYTES = 16 * 1024 * 1024
#: at shutdown: how long a connection idle between requests stays open for one more request
_IDLE_DRAIN_S = 1.0


@functools.cache
def _default_max_header_bytes() -> int:
    from gateway.config import Settings

    return Settings().max_header_bytes


@functools.cache
def _connection_limits() -> tuple[float, int]:
    """(header timeout in seconds, most open client connections) from the settings."""
    from gateway.config import Settings

    s = Settings()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = s.max_connections
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, max(soft // 2, 16))
    return s.header_timeout_s, cap


class _Corked:
    """A transport stand-in while one response is assembled: what uvicorn writes (and a
    close it asks for) is kept, then sent as one write."""

    __slots__ = ("close_after", "parts", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []
        self.close_after = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.close_after = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a response's head with its first body
    chunk (see the module doc). A head never followed by a body is replaced by the next one
    (uvicorn's own 500 after an app failed), never sent alone."""

    _start: Any = None
    #: the app's callback for a client that leaves before its answer is complete (set by
    #: the request path, :func:`gateway.request.handle`): called once, from
    #: ``connection_lost`` or when the connection is refused under the request
    on_lost: Any = None

    def lost(self) -> None:
        """The connection can no longer carry this request's answer."""
        if not self.response_complete:
            self.disconnected = True
            self.message_event.set()
            cb, self.on_lost = self.on_lost, None
            if cb is not None:
                cb()

    #: an HTTP/1.0 response whose length is unknown at its head (a stream): no chunked
    #: framing, which a 1.0 peer does not know (RFC 9112 section 6.1, formerly RFC 7230
    #: section 3.3.1: it would read the chunk-size lines as part of the event stream); the
    #: body goes out as it comes and the connection's close ends it
    _unframed = False

    async def send(self, message: Any) -> None:
        if self._unframed and message["type"] == "http.response.body":
            await self._send_unframed(message)
            return
        start = self._start
        if message["type"] == "http.response.start":
            if not self.response_started and not self.disconnected and \
                    self.scope["method"] != "HEAD":
                self._start = message
                return
            self._start = None
            await super().send(message)
            return
        if start is None:
            await super().send(message)
            return
        self._start = None
        if not message.get("more_body", False):
            if await self._send_whole(start, message.get("body", b"")):
                return
            hs = list(start.get("headers", ()))
            if start["status"] not in _NO_BODY and \
                    not any(k.lower() in _FRAMING for k, _ in hs):
                hs.append((b"content-length", b"%d" % len(message.get("body", b""))))
                start = {**start, "headers": hs}
        elif self.scope["http_version"] == "1.0" and start["status"] not in _NO_BODY and \
                not any(k.lower() in _FRAMING for k, _ in start.get("headers", ())):
            # uvicorn adds chunked framing to a head without a length unless told it has
            # one; a 1.0 connection is never kept alive, so its close delimits the body
            self.chunked_encoding = False
            self.keep_alive = False
            self._unframed = True
        transport = self.transport
        cork = _Corked(transport)
        self.transport = cork  # type: ignore[assignment]
        try:
            await super().send(start)
            if self._unframed:
                await self._send_unframed(message)
            else:
                await super().send(message)
        finally:
            self.transport = transport
            if cork.parts:
                transport.write(b"".join(cork.parts))
            if cork.close_after:
                transport.close()


    async def _send_unframed(self, message: Any) -> None:
        """A body part of an unframed response, written as it is; the last one closes the
        connection, which is what tells the client the body is complete."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected or self.response_complete:
            return
        if body := message.get("body", b""):
            self.transport.write(body)
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()

    async def _send_whole(self, start: Any, body: bytes) -> bool:
        """The common answer (a head and its whole body, no framing or connection header of
        the app's own) written here, as uvicorn's ``send`` would write it; False: anything
        else, left to uvicorn."""
        status = start["status"]
        app_headers = start.get("headers", ())
        if self.access_log or status in _NO_BODY or status not in STATUS_LINE or \
                any(k.lower() in _FRAMING or k.lower() == b"connection"
                    for k, _ in app_headers):
            return False
        hs = [*self.default_headers, *app_headers]
        # one search over all names and one over all values: the same check as uvicorn's
        # per header (the patterns are character classes)
        if HEADER_RE.search(b"".join(k for k, _ in hs)) or \
                HEADER_VALUE_RE.search(b"".join(v for _, v in hs)):
            return False  # uvicorn raises its error
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return True
        content = [STATUS_LINE[status]]
        for k, v in hs:
            content += (k.lower(), b": ", v, b"\r\n")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"content-length: %d\r\n\r\n" % len(body), body)
        self.response_started = True
        self.waiting_for_100_continue = False
        self.chunked_encoding = False
        self.expected_content_length = 0
        self.transport.write(b"".join(content))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True


#: statuses whose responses have no body (no content-length of ours either)
_NO_BODY = frozenset({100, 101, 102, 103, 204, 304})
_FRAMING = (b"content-length", b"transfer-encoding")


class GatewayHttpProtocol(HttpToolsProtocol):
    #: the cap on a request's head in bytes; ``None``: from the settings
    max_header_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = self.max_header_bytes or _default_max_header_bytes()
        self._in_head = True
        self._head_bytes = 0
        self._heads_done = 0
        self._discarded = -1  # >= 0 once the request was refused: bytes thrown away since
        self._header_timeout, self._max_connections = _connection_limits()
        self._head_timer: asyncio.TimerHandle | None = None
        #: when the next head must be complete (loop time): from the connection's start or
        #: the previous response
        self._head_deadline = 0.0
        #: after a response, uvicorn's keep-alive timer closes an idle connection before a
        #: head timeout would fire: the head timer is then armed only once a head has begun
        self._idle_needs_timer = self._header_timeout < self.timeout_keep_alive
        #: the server is shutting down: the next request is this connection's last
        self._draining = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + self._header_timeout
        if len(self.connections) > self._max_connections:
            self._refuse(503, f"too many open connections (at most {self._max_connections})",
                         "too_many_connections")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, _Cycle):
            cycle.lost()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.cycle.response_complete:  # waiting for the next head
            self._head_deadline = self.loop.time() + self._header_timeout
            if self._idle_needs_timer:
                self._arm_head_timer()

    def shutdown(self) -> None:
        gw = self.app_state.get("expertgate")
        if gw is not None:
            gw.begin_drain(_IDLE_DRAIN_S)
        if self.cycle is None or self.cycle.response_complete:
            # idle between requests: a client may be sending its next one right now (a
            # pooled connection; each worker a reload retires shuts down so). Closed at
            # once, that request met a reset and the client could not tell whether it ran;
            # it is answered, with connection: close, if it comes within _IDLE_DRAIN_S
            self._draining = True
            self.loop.call_later(_IDLE_DRAIN_S, self._close_if_idle)
            return
        super().shutdown()

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and \
                not self.transport.is_closing():
            self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_at(self._head_deadline, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._discarded >= 0:
            return
        self._refuse(408, f"no request headers within {self._header_timeout:g}s",
                     "request_timeout")

    def data_received(self, data: bytes) -> None:
        if self._discarded >= 0:
            self._discarded += len(data)
            if self._discarded > _LINGER_BYTES:
                self.transport.close()
            return
        if self._in_head:
            room = self._limit - self._head_bytes
            if len(data) > room:
                head, rest = data[:room], data[room:]
                self._head_bytes += len(head)
                heads = self._heads_done
                if head:
                    super().data_received(head)
                if self._discarded >= 0:
                    return  # the parser refused the request
                # no head completed within the allowance (a pipelined request's may have
                # begun: it is counted from here)
                if self._heads_done == heads and not self.transport.is_closing():
                    self._refuse(431, "request headers too large: the request line and "
                                 f"headers may take at most {self._limit} bytes",
                                 "request_header_fields_too_large")
                    return
                if rest and not self.transport.is_closing():
                    self.data_received(rest)
                return
            self._head_bytes += len(data)
            heads = self._heads_done
            super().data_received(data)
            if self._heads_done == heads and self._in_head and self._head_timer is None \
                    and self._discarded < 0 and not self.transport.is_closing():
                self._arm_head_timer()  # a head begun and not complete: its deadline counts
            return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = False
        self._heads_done += 1
        super().on_headers_complete()
        if isinstance(self.cycle, RequestResponseCycle):
            # its task has not run yet: the response goes out through _Cycle.send
            self.cycle.__class__ = _Cycle
            if self._draining:
                self.cycle.keep_alive = False  # the last request of this connection

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"malformed HTTP request: {msg}", "invalid_request")

    def _refuse(self, status: int, message: str, code: str) -> None:
        gw = self.app_state.get("expertgate")
        if gw is not None:  # counted: no request counter sees these answers
            gw.metrics.child(gw.metrics.http_refused, str(status), code).inc()
        body = error_body(status, message, "invalid_request_error", code)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self._discarded = 0
        cycle = self.cycle
        if isinstance(cycle, _Cycle):
            # a request still being answered on this connection (the refused bytes came
            # after its body: a content-length shorter than the body) can no longer be: as
            # when the client goes away, its sends become no-ops instead of writes after the
            # end of the stream, and the app hears that the client is gone
            cycle.lost()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()
