"""The HTTP/1.1 client the gateway calls OpenAI-compatible upstreams with.

One :class:`asyncio.Protocol` per pooled keep-alive connection, the response parsed by
httptools (llhttp, the parser uvicorn serves with): a request is one ``write`` of its head
and body, and each response callback feeds the waiting call directly. aiohttp did the same
job with a task per request for writing the body, a stream reader, request and response
objects of a few dozen attributes each and a connector walk per call: about half of the
gateway's CPU per pass-through request (``bench overhead``, profiled with py-spy).

What it does:

* bodies framed by ``content-length``, chunked, or (HTTP/1.0 style) by the connection's
  close; 1xx interim answers skipped; a stream is handed over chunk by chunk as it arrives
  (:meth:`Response.read_any`), reading paused while more than ``_HIGH_WATER`` bytes wait
  for a slow reader;
* keep-alive pools per origin (``scheme://host:port``), newest connection first; an idle
  connection is closed after ``keepalive_s`` (and at once when the upstream closes it, or
  answers ``connection: close``). The number of connections is not capped here: the
  dispatcher's per-expert concurrency limit bounds the calls in flight;
* a request sent on a pooled connection that the upstream closed meanwhile (it had not
  answered: no byte of a response came back) is sent once more on a new connection;
* ``https`` with the system's default certificate checks;
* errors as :class:`HTTPClientError` subclasses: :class:`ConnectFailed` (no connection;
  ``timed_out`` after ``connect_timeout_s``), :class:`ServerDisconnected` (closed before the
  response's head), :class:`ResponseIncomplete` (closed within the body),
  :class:`InvalidResponse` (not HTTP/1.x).

Timeouts other than the connect timeout are the caller's (a deadline around the call and
each read, see :mod:`gateway.upstreams`): cancelling a call or a read closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectFailed", "HTTPClientError", "InvalidResponse", "Response",
           "ResponseIncomplete", "ResponseTooLarge", "ServerDisconnected", "Target",
           "UpstreamHTTP"]

#: unread response bytes above which a connection stops reading until its reader catches up
_HIGH_WATER = 256 * 1024
#: bodies larger than this go out as a second write instead of being copied into the head's
_COPY_MAX = 64 * 1024


class HTTPClientError(Exception):
    """A call failed in the transport (not an HTTP status)."""


class ConnectFailed(HTTPClientError):
    """No connection could be opened (refused, unreachable, name not found, TLS, timeout)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ServerDisconnected(HTTPClientError):
    """The upstream closed the connection before the response's head."""


class ResponseIncomplete(HTTPClientError):
    """The upstream closed the connection within the response's body."""


class ResponseTooLarge(HTTPClientError):
    """A body read whole (:meth:`Response.read`) grew past its limit: the connection is
    closed, never held in memory to its end."""


class InvalidResponse(HTTPClientError):
    """What came back is not an HTTP/1.x response."""


class Target:
    """A parsed base URL: where to connect and the path prefix of its requests."""

    __slots__ = ("host", "host_header", "key", "port", "prefix", "ssl")

    def __init__(self, base: str) -> None:
        u = urlsplit(base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self.ssl = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == (443 if self.ssl else 80)
        self.host_header = (host if default else f"{host}:{self.port}").encode("idna")
        self.prefix = u.path.rstrip("/").encode()
        self.key = (self.ssl, self.host, self.port)


class Response:
    """A response whose head arrived; its body is read with :meth:`read` or, as it comes,
    :meth:`read_any`. :meth:`release` must be called when the caller stops reading early
    (the connection is then closed); a body read to its end leaves nothing to release."""

    __slots__ = ("__weakref__", "_chunks", "_conn", "_exc", "_limit", "_loop", "_paused",
                 "_size", "_waiter", "_whole", "content_type", "done", "framed", "head",
                 "retry_after", "status")

    def __init__(self, conn: _Conn, loop: asyncio.AbstractEventLoop) -> None:
        self._conn: _Conn | None = conn
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size = 0
        self._paused = False
        #: the whole body is wanted at once (read): never pause for it
        self._whole = False
        #: the most body bytes :meth:`read` takes (None: no limit)
        self._limit: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._exc: HTTPClientError | None = None
        self.head = False
        self.done = False
        #: a content-length or chunked body (else the body ends when the connection does)
        self.framed = False
        self.status = 0
        self.content_type = "application/json"
        #: the ``retry-after`` header of the answer (a 429's or 503's), if any
        self.retry_after: str | None = None

    async def _wait(self) -> None:
        w = self._waiter = self._loop.create_future()
        try:
            await w
        finally:
            self._waiter = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: HTTPClientError) -> None:
        if not self.done and self._exc is None:
            self._exc = exc
            self._conn = None
            self._wake()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (rest of the) body; ResponseTooLarge (the connection closed) once more
        than ``limit`` bytes of it arrived."""
        self._whole = True
        self._limit = limit
        if limit is not None and self._size > limit and self._conn is not None:
            self._conn.too_large(self)
        while not self.done:
            if self._exc is not None:
                raise self._exc
            if self._paused:
                self._resume()
            await self._wait()
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read_any(self) -> bytes:
        """The body bytes received since the last read (waiting for some); ``b""`` at the
        end."""
        while not self._chunks:
            if self.done:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait()
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        if self._paused:
            self._resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _resume(self) -> None:
        self._paused = False
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def release(self) -> None:
        """Stop reading: a body not read to its end closes the connection."""
        conn = self._conn
        self._conn = None
        if conn is not None and not self.done:
            conn.close()


class _Conn(asyncio.Protocol):
    """One keep-alive connection to an upstream, serving one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._ref: weakref.ref[Response] | None = None
        self.closed = False
        self.idle_since = 0.0

    @property
    def resp(self) -> Response | None:
        """The response being received. Held weakly: a caller that drops a response it did
        not read to its end (nor release) closes the connection, instead of leaving it
        paused mid-body forever."""
        ref = self._ref
        return ref() if ref is not None else None

    @resp.setter
    def resp(self, r: Response | None) -> None:
        self._ref = None if r is None else weakref.ref(r, self._dropped)

    def _dropped(self, ref: weakref.ref[Response]) -> None:
        if self._ref is ref:
            self._ref = None
            self.close()

    # the transport's callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            r = self.resp
            if r is not None:
                self.resp = None
                r._fail(InvalidResponse(f"invalid HTTP response: {e}"))
            self.close()

    def eof_received(self) -> bool:
        self.closed = True  # never taken from the pool again
        return False  # the transport closes; connection_lost finishes the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        r = self.resp
        if r is None:
            return
        self.resp = None
        if not r.head:
            why = f" ({exc})" if exc else ""
            r._fail(ServerDisconnected(f"the upstream closed the connection before "
                                       f"answering{why}"))
        elif not r.framed and r.status not in _NO_BODY:
            r.done = True  # a body delimited by the connection's close: complete
            r._conn = None
            r._wake()
        else:
            r._fail(ResponseIncomplete("the upstream closed the connection within the "
                                       "response body"))

    def pause_writing(self) -> None:
        """A request body larger than the socket's buffer: the transport keeps the rest."""

    def resume_writing(self) -> None:
        """See :meth:`pause_writing`."""

    # the parser's callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.resp
        if r is None:
            return
        n = name.lower()
        if n == b"content-type":
            r.content_type = value.decode("latin-1")
        elif n == b"content-length" or n == b"transfer-encoding":
            r.framed = True
        elif n == b"retry-after":
            r.retry_after = value.decode("latin-1")[:64]

    def on_headers_complete(self) -> None:
        r = self.resp
        if r is None:  # bytes nobody asked for (a response on an idle connection)
            raise InvalidResponse("a response without a request")
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue): the real head follows
            r.framed = False
            r.content_type = "application/json"
            return
        r.status = status
        r.head = True
        r._wake()

    def on_body(self, body: bytes) -> None:
        r = self.resp
        if r is None:
            return
        r._chunks.append(body)
        r._size += len(body)
        if r._limit is not None and r._size > r._limit:
            self.too_large(r)
            return
        if r._size > _HIGH_WATER and not r._paused and not r._whole and \
                self.transport is not None:
            r._paused = True
            self.transport.pause_reading()
        if len(r._chunks) == 1:
            r._wake()

    def too_large(self, r: Response) -> None:
        """Stop reading ``r``'s body past its limit: the bytes go, the connection closes."""
        self.resp = None  # what the parser still has of this data is not read
        r._chunks.clear()
        r._size = 0
        r._fail(ResponseTooLarge(f"the response body is over {r._limit} bytes"))
        self.close()

    def on_message_complete(self) -> None:
        r = self.resp
        if r is None or not r.head:
            return  # the end of an interim answer
        self.resp = None
        r.done = True
        r._conn = None
        r._wake()
        if self.parser.should_keep_alive() and not self.closed:
            if r._paused:
                r._paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


#: statuses whose responses have no body
_NO_BODY = frozenset({204, 304})


class _Pool:
    """The idle connections to one origin, newest last."""

    __slots__ = ("_sweep", "client", "idle", "target")

    def __init__(self, client: UpstreamHTTP, target: Target) -> None:
        self.client = client
        self.target = target
        self.idle: list[_Conn] = []
        self._sweep: asyncio.TimerHandle | None = None

    def put(self, conn: _Conn) -> None:
        if self.client.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        if self._sweep is None:
            self._sweep = self.client.loop.call_later(self.client.keepalive_s, self._expire)

    def forget(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def take(self) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def _expire(self) -> None:
        self._sweep = None
        limit = time.monotonic() - self.client.keepalive_s
        for conn in [c for c in self.idle if c.idle_since <= limit]:
            conn.close()  # connection_lost removes it
        if self.idle:
            oldest = min(c.idle_since for c in self.idle)
            self._sweep = self.client.loop.call_later(
                max(oldest + self.client.keepalive_s - time.monotonic(), 0.01), self._expire)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


class UpstreamHTTP:
    """Pooled keep-alive HTTP/1.1 connections to upstreams (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, keepalive_s: float = 30.0) -> None:
        self.loop = loop
        self.keepalive_s = keepalive_s
        self.closed = False
        self._targets: dict[str, Target] = {}
        self._pools: dict[tuple[bool, str, int], _Pool] = {}
        #: (origin, method, path, headers) -> the request's head up to its content-length
        self._heads: dict[tuple[object, ...], bytes] = {}
        self._ssl: ssl.SSLContext | None = None

    def target(self, base: str) -> Target:
        t = self._targets.get(base)
        if t is None:
            t = self._targets[base] = Target(base)
        return t

    async def request(self, method: bytes, base: str, path: str, body: bytes,
                      headers: dict[str, str], *, connect_timeout_s: float) -> Response:
        """Send a request; returns once its response's head arrived."""
        t = self._targets.get(base) or self.target(base)
        head = self._head(t, method, path, headers)
        data = head + b"%d\r\n\r\n" % len(body)
        pool = self._pools.get(t.key)
        if pool is None:
            pool = self._pools[t.key] = _Pool(self, t)
        loop = self.loop
        fresh = False
        while True:
            conn = None if fresh else pool.take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool, connect_timeout_s)
            resp = Response(conn, loop)
            conn.resp = resp
            transport = conn.transport
            assert transport is not None
            if len(body) <= _COPY_MAX:
                transport.write(data + body)
            else:
                transport.write(data)
                transport.write(body)
            try:
                while not resp.head:
                    if resp._exc is not None:
                        raise resp._exc
                    await resp._wait()
            except ServerDisconnected:
                # the upstream closed this pooled connection after its last answer, before
                # it read this request: once more on a new connection
                if reused:
                    fresh = True
                    continue
                raise
            except BaseException:
                resp.release()
                raise
            return resp

    def _head(self, t: Target, method: bytes, path: str, headers: dict[str, str]) -> bytes:
        key = (t.key, t.prefix, method, path, *headers.items())
        head = self._heads.get(key)
        if head is None:
            lines = [method, b" ", t.prefix, path.encode(), b" HTTP/1.1\r\nhost: ",
                     t.host_header, b"\r\n"]
            for k, v in headers.items():
                if k.lower() in ("content-length", "host", "transfer-encoding"):
                    continue
                if any(c in k or c in v for c in "\r\n\x00"):
                    raise ValueError(f"header {k!r} has a line break or NUL")
                lines += (k.encode("latin-1"), b": ", v.encode("latin-1"), b"\r\n")
            lines.append(b"content-length: ")
            head = b"".join(lines)
            if len(self._heads) >= 1024:  # keys carry credentials that may rotate
                self._heads.clear()
            self._heads[key] = head
        return head

    async def _connect(self, pool: _Pool, timeout_s: float) -> _Conn:
        if self.closed:
            raise ConnectFailed("the client is closed")
        t = pool.target
        ctx = None
        if t.ssl:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(pool), t.host, t.port, ssl=ctx,
                    server_hostname=t.host if ctx is not None else None)
        except TimeoutError:
            raise ConnectFailed(f"no connection within {timeout_s:g}s", timed_out=True
                                ) from None
        except (OSError, ssl.SSLError) as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from None
        return conn

    async def close(self) -> None:
        """Close every idle connection; calls in flight keep theirs until they end."""
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        await asyncio.sleep(0)  # let the transports' close callbacks run
