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
  what the connection has seen, then one `poll` of its socket.

Errors are httpcore's own (`ConnectError`, `ReadTimeout`, ...), so httpx maps them as
it does for its default backend.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# Bytes received and not yet read, per connection, before the socket is paused.
READ_AHEAD_BYTES = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Received chunks queued for `AsyncioStream.read`; write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None  # set while writing is paused

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # asyncio's or uvloop's (not asyncio.Transport subclasses)

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
        """The next received bytes (at most `max_bytes`); the queue must not be empty."""
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.paused and self.buffered < READ_AHEAD_BYTES // 2 and self.transport:
            self.paused = False
            self.transport.resume_reading()
        return chunk


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
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
            if protocol.eof:
                return b""
            if protocol.reader is not None:
                raise httpcore.ReadError("another read is already waiting on this connection")
            protocol.reader = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.reader, timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the upstream") from None
            finally:
                protocol.reader = None
        return protocol.take(max_bytes)

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
            transport = await asyncio.wait_for(
                loop.start_tls(
                    self._transport,
                    protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                ),
                timeout,
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
        try:
            transport, protocol = await asyncio.wait_for(connect, timeout)
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


def upstream_client(**kwargs: Any) -> httpx.AsyncClient:
    """`httpx.AsyncClient(**kwargs)` on the asyncio backend: the gateway's upstream client."""
    return use_asyncio_backend(httpx.AsyncClient(**kwargs))


def use_asyncio_backend(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Give every connection pool of `client` (its transport and any proxy mounts,
    e.g. from `HTTPS_PROXY`) the asyncio backend; call before the first request.

    httpx has no public switch for this, so the pools' backend attribute is set where
    httpcore keeps it; a pool without one (a mock transport) is left as it is.
    """
    backend = AsyncioBackend()
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = backend
    return client
