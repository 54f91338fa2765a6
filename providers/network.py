"""Upstream connections straight on asyncio, under httpx (an httpcore network backend).

Why: httpcore's default backend goes through anyio, which per read enters a cancel
scope, takes a resource guard, pauses and resumes the transport (two `epoll_ctl`
calls), and per pool operation asks every pooled connection whether its socket is
readable by building anyio's table of socket attributes (a `getpeername` call each).
With 32 upstream calls answering ~3 MB of base64 at once, that was about a third of
the event loop's time per image (py-spy, `bench/passthrough.py`).

`AsyncioBackend` keeps httpx, httpcore and h11 (HTTP/1.1 and HTTP/2, proxies, TLS,
the connection pool) and replaces only the byte transport under them:

- a read returns data already received without waiting, and arms a timer only when
  it must wait;
- the socket is read ahead up to `READ_AHEAD_BYTES` per connection, then paused
  until the reader catches up, so a slow reader never holds more than that;
- "is this idle connection readable" (a server that closed it) is answered from
  what the connection has seen, then one `poll` of its socket;
- a body asked for whole (`WHOLE_BODY`, set by `providers.http`'s readers) with a
  declared length is received straight into one buffer of that length (`_HTTP11`),
  a buffer not zeroed first (`new_buffer`).

Errors are httpcore's own (`ConnectError`, `ReadTimeout`, ...), so httpx maps them as
it does for its default backend.

`LinearAssignment` replaces the pool's assignment pass (run when a request arrives
and when an answer is closed). httpcore 1.0's pass is quadratic in the pooled
connections: for every idle connection it rebuilds a list of all of them, and for
every queued request it filters all of them twice. At 32 connections that was
~1,000 calls per pass and the largest item of a load-generating client's profile.
Its keep-alive check also counted every connection, idle or not, so past
`max_keepalive_connections` busy connections it closed connections as soon as they
became idle. The pass here is linear, closes only surplus idle connections, and hands
an idle HTTP/1.1 connection to one queued request, not to every one of them.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import select
import socket
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import Any

import h11
import httpcore
import httpx

try:  # h11's reader of a body with a Content-Length, to read such bodies whole
    from h11._readers import ContentLengthReader as _ContentLengthReader
except ImportError:  # pragma: no cover - another h11: bodies are read through it
    _ContentLengthReader = None

try:  # CPython: a bytearray of uninitialized bytes (see `new_buffer`)
    _bytearray_of = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _bytearray_of.restype = ctypes.py_object
    _bytearray_of.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
except AttributeError:  # pragma: no cover - another Python: zeroed ones
    _bytearray_of = None


def new_buffer(size: int) -> bytearray:
    """A bytearray of `size` bytes that are not zeroed first: the caller overwrites
    every one of them before anyone reads it.

    `bytearray(size)` zeroes its bytes while holding the GIL, and on this kind of VM a
    page the process has not touched before faults at ~2 µs (virtio-balloon free page
    reporting): zeroing each ~3 MB upstream answer's buffer was over a third of the
    time the gateway held the GIL in a cold burst of 32 (py-spy --gil,
    `bench/passthrough.py`), while the other threads waited. Received into directly,
    the pages fault in the kernel's copy, with the GIL released.
    """
    if _bytearray_of is None or size <= 0:
        return bytearray(size)
    return _bytearray_of(None, size)


# Bytes received and not yet read, per connection, before the socket is paused.
READ_AHEAD_BYTES = 256 * 1024
_scratch = threading.local()  # each thread's loop receives into its own buffer

# A request extension: read the response body whole, into one buffer (`_HTTP11`), when
# its declared length is at most `WHOLE_BODY_MAX_BYTES`. Set by `providers.http`'s
# readers, which join the body anyway.
WHOLE_BODY = "inkgate.whole_body"
WHOLE_BODY_MAX_BYTES = 64 * 1024 * 1024


class _Protocol(asyncio.BufferedProtocol):
    """Received chunks queued for `AsyncioStream.read`; write flow control.

    The loop receives into a buffer this gives it (`get_buffer`): while `read_into`
    waits, straight into the reader's own buffer; otherwise into a 256 KiB scratch
    buffer (one per thread), whose bytes are then queued as a chunk.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.offset = 0  # of the next unread byte in chunks[0]
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None  # set while writing is paused
        self.target: memoryview | None = None  # read_into's buffer, while it waits
        self.filled = 0  # bytes received into `target`

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # asyncio's or uvloop's (not asyncio.Transport subclasses)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.target is not None:
            return self.target[self.filled :]
        scratch = getattr(_scratch, "buffer", None)
        if scratch is None:
            scratch = _scratch.buffer = memoryview(bytearray(READ_AHEAD_BYTES))
        return scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self.target is not None:
            self.filled += nbytes
            if self.filled == len(self.target):
                self.target = None
                self._wake_reader()
        else:  # the loop calls this right after receiving into the scratch buffer
            self.data_received(bytes(_scratch.buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_AHEAD_BYTES and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake_reader()
        if self.writer is not None and not self.writer.done():
            self.writer.set_result(None)

    def pause_writing(self) -> None:
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.set_result(None)
        self.writer = None

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        """The next received bytes (at most `max_bytes`); the queue must not be empty.

        A chunk larger than `max_bytes` (the loop reads up to 256 KiB at once, httpcore
        asks for 64 KiB) is handed out in slices from an offset, so its remainder is
        never copied again."""
        chunk = self.chunks[0]
        start = self.offset
        end = start + max_bytes
        if end >= len(chunk):
            self.chunks.popleft()
            self.offset = 0
            piece = chunk[start:] if start else chunk
        else:
            self.offset = end
            piece = chunk[start:end]
        self._consumed(len(piece))
        return piece

    def take_into(self, view: memoryview) -> int:
        """Copy the next received bytes (at most `len(view)`) into `view`; the number
        copied. The queue must not be empty."""
        chunk = self.chunks[0]
        start = self.offset
        count = min(len(view), len(chunk) - start)
        view[:count] = memoryview(chunk)[start : start + count]
        if start + count == len(chunk):
            self.chunks.popleft()
            self.offset = 0
        else:
            self.offset = start + count
        self._consumed(count)
        return count

    def _consumed(self, count: int) -> None:
        self.buffered -= count
        if self.paused and self.buffered < READ_AHEAD_BYTES // 2 and self.transport:
            self.paused = False
            self.transport.resume_reading()


def _timed_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _wait(future: asyncio.Future[None], timeout: float | None) -> None:
    """Wait for `future`, raising TimeoutError after `timeout` seconds (None: no limit)."""
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(max(0.0, timeout), _timed_out, future)
    try:
        await future
    finally:
        timer.cancel()


def _is_socket_readable(sock: socket.socket | None) -> bool:
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True  # gone: the next read will say so
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._socket: socket.socket | None = transport.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._protocol.chunks and not await self._received(timeout):
            return b""
        return self._protocol.take(max_bytes)

    async def read_into(self, view: memoryview, timeout: float | None = None) -> int:
        """Fill `view` with the next received bytes (fewer only at the end of the stream);
        the number of bytes filled.

        What was already received is copied in; the rest is received straight into
        `view`, and this wakes once, when it is full. `timeout` is the longest the
        stream may go without receiving a byte, as for `read`.
        """
        protocol = self._protocol
        filled, size = 0, len(view)
        while filled < size and protocol.chunks:
            filled += protocol.take_into(view[filled:])
        if filled == size or protocol.eof or protocol.error is not None:
            return filled
        if protocol.reader is not None:
            raise httpcore.ReadError("another read is already waiting on this connection")
        protocol.target, protocol.filled = view[filled:], 0  # (reading is on: chunks are empty)
        try:
            while protocol.target is not None:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                if protocol.eof:
                    break
                before = protocol.filled
                protocol.reader = asyncio.get_running_loop().create_future()
                try:
                    await _wait(protocol.reader, timeout)
                except TimeoutError:
                    if protocol.filled == before:
                        raise httpcore.ReadTimeout("timed out reading from the upstream") from None
                finally:
                    protocol.reader = None
        finally:
            protocol.target = None
        return filled + protocol.filled

    async def _received(self, timeout: float | None) -> bool:
        """Wait until data is received (True) or the stream has ended (False)."""
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
            if protocol.eof:
                return False
            if protocol.reader is not None:
                raise httpcore.ReadError("another read is already waiting on this connection")
            protocol.reader = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.reader, timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the upstream") from None
            finally:
                protocol.reader = None
        return True

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        writer = protocol.writer
        if writer is not None and not writer.done():
            try:
                await _wait(writer, timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the upstream") from None
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error) or "the connection was lost")

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):  # in this task: see `_connected`
                transport = await loop.start_tls(
                    self._transport,
                    protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        protocol.transport = transport
        stream = AsyncioStream(transport, protocol)
        stream._socket = self._socket
        return stream

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of idle pooled connections (a server that closed one). While reading
            # is on, the loop has delivered whatever the socket had: no system call.
            protocol = self._protocol
            if protocol.chunks or protocol.eof:
                return True
            return protocol.paused and _is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        connect = loop.create_connection(_Protocol, host, port, local_addr=local)
        return await self._connected(connect, timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        connect = asyncio.get_running_loop().create_unix_connection(_Protocol, path)
        return await self._connected(connect, timeout, socket_options)

    async def _connected(
        self, connect: Any, timeout: float | None, options: Iterable[httpcore.SOCKET_OPTION] | None
    ) -> AsyncioStream:
        # The connect starts now, in this task. `asyncio.wait_for` would run it as a new
        # task, which starts only after everything else the loop has ready: in a burst
        # of 32 requests, every upstream connect waited until the last request had
        # been taken in (~20 ms), and the upstream call with it.
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await connect
        except TimeoutError:
            raise httpcore.ConnectTimeout("timed out connecting to the upstream") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        try:
            for option in options or ():
                sock.setsockopt(*option)
        except OSError as exc:
            transport.abort()
            raise httpcore.ConnectError(str(exc)) from exc
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LinearAssignment:
    """Mixin for `httpcore.AsyncConnectionPool` (and its proxy subclasses): the pass
    that assigns queued requests to connections, in O(connections + requests).

    Semantics follow httpcore's pass: closed connections are dropped, expired ones
    and idle ones past `max_keepalive_connections` (oldest first) are returned for
    closing, a queued request gets an available connection for its origin, else a new
    one while under `max_connections`, else the room of an idle connection to another
    origin. A connection already assigned to a request (connecting, or idle until
    the request is sent) is neither closed nor handed out again.
    """

    _connections: list[Any]
    _requests: list[Any]
    _max_connections: int
    _max_keepalive_connections: int

    def create_connection(self, origin: httpcore.Origin) -> Any:
        connection = super().create_connection(origin)  # type: ignore[misc]
        if type(connection) is httpcore.AsyncHTTPConnection:  # not a proxy's tunnel
            connection.__class__ = _Connection
            connection._request_lock = _RequestLock(connection)
        return connection

    def _assign_requests_to_connections(self) -> list[Any]:
        reserved = {id(r.connection) for r in self._requests if r.connection is not None}
        closing: list[Any] = []
        kept: list[Any] = []
        idle: list[Any] = []  # idle and not reserved, oldest first
        for connection in self._connections:
            if connection.is_closed():
                continue
            spoken_for = id(connection) in reserved
            if not spoken_for and connection.has_expired():
                closing.append(connection)
                continue
            kept.append(connection)
            if not spoken_for and connection.is_idle():
                idle.append(connection)
        surplus = len(idle) - self._max_keepalive_connections
        if surplus > 0:
            dropped = {id(c) for c in idle[:surplus]}
            closing += idle[:surplus]
            idle = idle[surplus:]
            kept = [c for c in kept if id(c) not in dropped]
        self._connections = kept

        queued = [r for r in self._requests if r.is_queued()]
        if not queued:
            return closing
        # reusable now: idle connections no request holds, and connections that can
        # take more requests at once (HTTP/2)
        available = [
            c for c in kept if c.is_available() and (not c.is_idle() or id(c) not in reserved)
        ]
        room = self._max_connections - len(kept)
        evictable = collections.deque(idle)  # to make room for another origin
        for pool_request in queued:
            origin = pool_request.request.url.origin
            connection = next((c for c in available if c.can_handle_request(origin)), None)
            if connection is not None:
                if connection.is_idle():  # HTTP/1.1: one request at a time
                    available.remove(connection)
                    reserved.add(id(connection))
            else:
                while evictable and id(evictable[0]) in reserved:
                    evictable.popleft()
                if room <= 0 and not evictable:
                    if not available:
                        break  # nothing can be assigned until a connection frees up
                    continue  # another origin's request may still find one
                if room > 0:
                    room -= 1
                else:
                    old = evictable.popleft()
                    self._connections.remove(old)
                    if old in available:
                        available.remove(old)
                    closing.append(old)
                connection = self.create_connection(origin)
                self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing


class _HTTP11(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection, reading up to `READ_AHEAD_BYTES` at once, and a
    body asked for whole (`WHOLE_BODY`) into one buffer.

    httpcore reads 64 KiB at a time; the event loop receives up to 256 KiB at once, and
    every read goes up through h11, httpcore and httpx (about ten Python calls), so
    a 3 MB answer took ~47 passes instead of ~12 (~5% of the loop's time per image).

    A whole body is copied once, from the received chunks into a `bytearray` of its
    declared length, and handed up as that one chunk. Read through h11, each byte was
    copied four times on the event loop (into h11's buffer, out of it, by httpcore's
    `bytes()`, and by the caller's join) and passed up in ~12 pieces.
    """

    READ_NUM_BYTES = READ_AHEAD_BYTES

    async def _receive_response_body(self, request: httpcore.Request) -> AsyncIterator[bytes]:
        reader = getattr(self._h11_state, "_reader", None)
        stream = self._network_stream
        if (
            not request.extensions.get(WHOLE_BODY)
            or type(reader) is not _ContentLengthReader
            or not isinstance(stream, AsyncioStream)
            or not 0 < reader._remaining <= WHOLE_BODY_MAX_BYTES
        ):
            async for chunk in super()._receive_response_body(request):
                yield chunk
            return
        timeout = request.extensions.get("timeout", {}).get("read")
        # every byte is received into it before it is handed out (or the read fails)
        body = new_buffer(reader._remaining)
        view = memoryview(body)
        filled = 0
        try:
            # What h11 received with the headers comes first.
            while isinstance(event := self._h11_state.next_event(), h11.Data):
                view[filled : filled + len(event.data)] = event.data
                filled += len(event.data)
            if event is h11.NEED_DATA:
                missing = reader._remaining
                got = await stream.read_into(view[filled : filled + missing], timeout)
                if got < missing:
                    raise httpcore.RemoteProtocolError(
                        "peer closed connection without sending complete message body "
                        f"(received {len(body) - missing + got} bytes, expected {len(body)})"
                    )
                reader._remaining = 0  # h11 counts what it was given: all of it, now
                event = self._h11_state.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpcore.RemoteProtocolError(str(exc)) from exc
        if not isinstance(event, h11.EndOfMessage):
            raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")
        view.release()
        yield body  # type: ignore[misc]  # a bytearray: bytes-like, and no copy


class _Connection(httpcore.AsyncHTTPConnection):
    """A pooled connection whose HTTP/1.1 connection is an `_HTTP11`, and whose locks
    are asyncio's (`_RequestLock`)."""


class _RequestLock(asyncio.Lock):
    """A connection's request lock (`_Connection._request_lock`), on asyncio directly.

    httpcore's locks are anyio's, which yield to the event loop on every acquire, even
    a free one; a request took three on its way (before connecting, and its HTTP/1.1
    connection's state lock before sending and when the answer closed). Each yield
    sends the request to the back of everything the loop has ready: in a burst of 32,
    every upstream connect started only after the last request had been taken in
    (~20 ms later than it could). asyncio's lock returns at once when it is free.

    The connection makes its HTTP/1.1 connection while holding this lock; on the way
    out, that connection becomes an `_HTTP11`, with its state lock on asyncio too.
    """

    def __init__(self, connection: httpcore.AsyncHTTPConnection) -> None:
        super().__init__()
        self._connection = weakref.ref(connection)

    async def __aexit__(self, *exc_info: object) -> None:
        connection = self._connection()
        inner = getattr(connection, "_connection", None)
        if type(inner) is httpcore.AsyncHTTP11Connection:
            inner.__class__ = _HTTP11
            inner._state_lock = asyncio.Lock()  # type: ignore[assignment]
        self.release()


def _linear_pool_class(cls: type) -> type:
    if issubclass(cls, LinearAssignment):
        return cls
    return _LINEAR_CLASSES.setdefault(cls, type(cls.__name__, (LinearAssignment, cls), {}))


_LINEAR_CLASSES: dict[type, type] = {}


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def upstream_client(**kwargs: Any) -> httpx.AsyncClient:
    """`httpx.AsyncClient(**kwargs)` on the asyncio backend: the gateway's upstream client.

    It keeps no cookies: one client serves every user and provider, so a `Set-Cookie`
    from an upstream (say a relay behind Cloudflare) must not ride along on later calls
    made for someone else. (Not parsing them also saves ~0.1 ms of the loop a call.)
    """
    client = use_asyncio_backend(httpx.AsyncClient(**kwargs))
    client._cookies = _NoCookies()  # httpx has no switch; its property reads this
    return client


def use_asyncio_backend(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Give every connection pool of `client` (its transport and any proxy mounts,
    e.g. from `HTTPS_PROXY`) the asyncio backend and the linear assignment pass; call
    before the first request.

    httpx has no public switch for either, so the pools' backend attribute is set where
    httpcore keeps it and each pool becomes its class with `LinearAssignment` mixed in
    (no state is added); a pool without one (a mock transport) is left as it is.
    """
    backend = AsyncioBackend()
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = backend
            if isinstance(pool, httpcore.AsyncConnectionPool):
                pool.__class__ = _linear_pool_class(type(pool))
    return client
