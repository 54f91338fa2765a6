"""providers.network: httpx over the asyncio backend, against real sockets on loopback.

Each test runs on asyncio's own loop and on uvloop (the gateway serves on uvloop).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import pytest
import uvloop

from providers import network
from providers.network import AsyncioBackend, AsyncioStream, use_asyncio_backend

LOOPS = ["asyncio", "uvloop"]


def run_on(kind: str, main: Callable[[], Awaitable[None]]) -> None:
    (uvloop.run if kind == "uvloop" else asyncio.run)(main())


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


class Server:
    """A small HTTP/1.1 server: keep-alive, and a few misbehaviours on request."""

    def __init__(self) -> None:
        self.connections = 0
        self.proxied = 0
        self.cookies: list[str | None] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                if target.startswith("http://"):  # absolute form: asked as a forward proxy
                    self.proxied += 1
                    target = "/" + target.split("/", 3)[3]
                headers = {
                    k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                length = int(headers.get("content-length", "0"))
                self.cookies.append(headers.get("cookie"))
                if target == "/stall-upload":
                    await asyncio.sleep(30)  # never reads the body
                    return
                body = await reader.readexactly(length) if length else b""
                if target == "/slow":
                    await asyncio.sleep(30)
                    return
                extra = b""
                if target.startswith("/hold/"):
                    await asyncio.sleep(float(target.rsplit("/", 1)[1]))
                if target == "/set-cookie":
                    extra = b"Set-Cookie: session=abc123; Path=/\r\n"
                if target.startswith(("/cut/", "/drip/")):
                    # /cut/N: N bytes declared, half sent, then closed;
                    # /drip/N/PIECES/GAP: N bytes in PIECES pieces, GAP seconds apart
                    size, *drip = target.split("/")[2:]
                    answer = pattern(int(size))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer))
                    if not drip:
                        writer.write(answer[: len(answer) // 2])
                        await writer.drain()
                        return
                    pieces, gap = int(drip[0]), float(drip[1])
                    step = -(-len(answer) // pieces)
                    for at in range(0, len(answer), step):
                        await asyncio.sleep(gap)
                        writer.write(answer[at : at + step])
                        await writer.drain()
                    continue
                if target.startswith("/big/"):
                    answer = pattern(int(target.rsplit("/", 1)[1]))
                elif target == "/echo":
                    answer = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
                else:
                    answer = b"ok"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(answer), extra)
                    + answer
                )
                await writer.drain()
                if target == "/then-close":
                    await asyncio.sleep(0.05)  # a server's keep-alive timeout, cut short
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def client(**kwargs) -> httpx.AsyncClient:
    return use_asyncio_backend(httpx.AsyncClient(**kwargs))


def streams_of(http: httpx.AsyncClient) -> list:
    pool = http._transport._pool  # type: ignore[attr-defined]
    return [conn._connection._network_stream for conn in pool.connections if conn._connection]


@pytest.mark.parametrize("loop", LOOPS)
def test_large_answers_and_uploads_arrive_whole_on_one_kept_alive_connection(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                for size in (0, 1, 70_000, 3_000_000):
                    r = await http.get(f"{base}/big/{size}")
                    assert r.status_code == 200 and r.content == pattern(size)
                upload = pattern(5_000_000)
                r = await http.post(f"{base}/echo", content=upload)
                assert r.text == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}"
                assert server.connections == 1  # every request on the same connection
                assert all(isinstance(s, AsyncioStream) for s in streams_of(http))
                (inner,) = [c._connection for c in http._transport._pool.connections]
                assert inner.READ_NUM_BYTES == network.READ_AHEAD_BYTES  # 256 KiB reads
                assert streams_of(http)[0].get_extra_info("server_addr")[1] == server.port
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_concurrent_answers(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                url = f"http://127.0.0.1:{server.port}/big/2000000"
                answers = await asyncio.gather(*(http.get(url) for _ in range(12)))
                assert all(r.content == pattern(2_000_000) for r in answers)
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_the_server_closed_is_not_reused(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                assert (await http.get(f"{base}/then-close")).text == "ok"
                await asyncio.sleep(0.3)  # the server has closed it by now
                stream = streams_of(http)[0]
                assert stream.get_extra_info("is_readable") is True
                assert (await http.get(f"{base}/big/10")).content == pattern(10)
                assert server.connections == 2
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_open_connection_is_not_readable(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                await http.get(f"http://127.0.0.1:{server.port}/big/10")
                await asyncio.sleep(0.05)
                assert streams_of(http)[0].get_extra_info("is_readable") is False
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_timeouts_and_refusals_are_httpx_errors(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=httpx.Timeout(10, read=0.2, write=0.3)) as http:
                base = f"http://127.0.0.1:{server.port}"
                with pytest.raises(httpx.ReadTimeout):
                    await http.get(f"{base}/slow")
                with pytest.raises(httpx.WriteTimeout):  # the server never reads the body
                    await http.post(f"{base}/stall-upload", content=b"x" * 64_000_000)
            free = server.port
        finally:
            await server.close()
        async with client(timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{free}/")
        with pytest.raises(httpcore.ConnectTimeout):
            await AsyncioBackend()._connected(asyncio.sleep(10), 0.05, None)

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_an_unread_answer_holds_only_the_read_ahead(loop):
    async def main() -> None:
        server = await Server().start()
        size = 16_000_000
        try:
            async with client(timeout=10) as http:
                url = f"http://127.0.0.1:{server.port}/big/{size}"
                async with http.stream("GET", url) as response:
                    await asyncio.sleep(0.3)  # the server would have sent it all by now
                    protocol = streams_of(http)[0]._protocol
                    assert protocol.paused
                    # one more piece of a socket read can land after the pause
                    assert protocol.buffered <= network.READ_AHEAD_BYTES + (1 << 20)
                    body = await response.aread()
                assert body == pattern(size)
                assert not protocol.paused
        finally:
            await server.close()

    run_on(loop, main)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("upstream.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_with_the_name_checked(loop, tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        server = await Server().start(server_ctx)
        try:
            async with client(timeout=10, verify=trusting) as http:
                # the address is dialled; the certificate is checked against sni_hostname
                url = f"https://127.0.0.1:{server.port}/big/3000000"
                r = await http.get(url, extensions={"sni_hostname": "upstream.test"})
                assert r.content == pattern(3_000_000)
                whole = {"sni_hostname": "upstream.test", network.WHOLE_BODY: True}
                request = http.build_request("GET", url, extensions=whole)
                response = await http.send(request, stream=True)
                chunks = [chunk async for chunk in response.aiter_raw()]
                await response.aclose()
                assert len(chunks) == 1 and chunks[0] == pattern(3_000_000)
                stream = streams_of(http)[0]
                assert stream.get_extra_info("ssl_object") is not None
                assert stream.get_extra_info("is_readable") is False
            async with client(timeout=10, verify=trusting) as http:
                with pytest.raises(httpx.ConnectError):  # a name the certificate lacks
                    await http.get(url, extensions={"sni_hostname": "other.test"})
            async with client(timeout=10) as http:  # the system's CAs: not trusted
                with pytest.raises(httpx.ConnectError):
                    await http.get(url, extensions={"sni_hostname": "upstream.test"})
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_through_a_proxy_from_the_environment(loop, monkeypatch):
    async def main() -> None:
        proxy = await Server().start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        try:
            async with client(timeout=10) as http:
                r = await http.get("http://upstream.invalid/big/300000")
                assert r.content == pattern(300_000) and proxy.proxied == 1
                pool = http._transport_for_url(httpx.URL("http://upstream.invalid/"))._pool
                assert isinstance(pool._network_backend, AsyncioBackend)
        finally:
            await proxy.close()

    run_on(loop, main)


def test_every_pool_of_the_client_gets_the_backend(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    http = use_asyncio_backend(httpx.AsyncClient())
    pools = [http._transport._pool] + [t._pool for t in http._mounts.values()]
    assert len(pools) >= 2  # the proxy from the environment is kept
    assert all(isinstance(p._network_backend, AsyncioBackend) for p in pools)
    assert all(isinstance(p, network.LinearAssignment) for p in pools)
    assert isinstance(pools[1], httpcore.AsyncHTTPProxy)  # still a proxy pool
    mocked = use_asyncio_backend(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: None)))
    assert isinstance(mocked._transport, httpx.MockTransport)  # left as it is


async def test_the_gateway_client_uses_it(services):
    assert isinstance(services.http._transport._pool._network_backend, AsyncioBackend)


# --- the connection pool's assignment pass ------------------------------------------------


def pool_of(http: httpx.AsyncClient):
    return http._transport._pool  # type: ignore[attr-defined]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_burst_opens_one_connection_per_request_and_the_next_reuses_them(loop):
    async def main() -> None:
        server = await Server().start()
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        try:
            async with client(timeout=10, limits=limits) as http:
                url = f"http://127.0.0.1:{server.port}/hold/0.05"
                for _ in range(3):
                    answers = await asyncio.gather(*(http.get(url) for _ in range(32)))
                    assert all(r.status_code == 200 for r in answers)
                assert server.connections == 32  # the later bursts reused every one
                assert len(pool_of(http).connections) == 32
                assert all(c.is_idle() for c in pool_of(http).connections)
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_request_connects_and_is_sent_before_the_loop_runs_other_ready_work(loop, monkeypatch):
    """No yield to the event loop on the way to the socket (httpcore's anyio locks
    yielded three times a request, so a burst's connects waited for all of its intake)."""
    order: list[str] = []
    connect_tcp, write = AsyncioBackend.connect_tcp, AsyncioStream.write

    async def recording_connect(self, *args, **kwargs):
        order.append("connect")
        return await connect_tcp(self, *args, **kwargs)

    async def recording_write(self, *args, **kwargs):
        order.append("write")
        return await write(self, *args, **kwargs)

    monkeypatch.setattr(AsyncioBackend, "connect_tcp", recording_connect)
    monkeypatch.setattr(AsyncioStream, "write", recording_write)

    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                url = f"http://127.0.0.1:{server.port}/ok"
                # a new connection (its connect then waits for the socket), then the
                # kept-alive one (the request written whole)
                for first in ("connect", "write"):
                    order.clear()
                    task = asyncio.ensure_future(http.get(url))
                    asyncio.get_running_loop().call_soon(order.append, "other")
                    assert (await task).status_code == 200
                    assert order[0] == first and order.index("other") > 0
                (conn,) = pool_of(http).connections
                assert type(conn._connection) is network._HTTP11
                assert type(conn._request_lock) is network._RequestLock
                assert type(conn._connection._state_lock) is asyncio.Lock
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_keep_alive_counts_idle_connections_only(loop):
    """httpcore 1.0 compared every connection, busy or not, with the keep-alive limit,
    so with more busy connections than that it closed each one as it became idle."""

    async def main() -> None:
        server = await Server().start()
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=2)
        try:
            async with client(timeout=10, limits=limits) as http:
                base = f"http://127.0.0.1:{server.port}"
                slow = [asyncio.create_task(http.get(f"{base}/hold/0.5")) for _ in range(6)]
                await asyncio.sleep(0.1)
                for _ in range(3):  # one idle connection at a time while six are busy
                    assert (await http.get(f"{base}/hold/0")).status_code == 200
                assert server.connections == 7  # the quick requests shared one
                await asyncio.gather(*slow)
                connections = pool_of(http).connections
                assert len(connections) == 2 and all(c.is_idle() for c in connections)
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_queued_requests_wait_for_a_free_connection(loop):
    async def main() -> None:
        server = await Server().start()
        limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
        try:
            async with client(timeout=10, limits=limits) as http:
                url = f"http://127.0.0.1:{server.port}/hold/0.02"
                calls = 0
                pool = pool_of(http)
                assign = pool._assign_requests_to_connections

                def counted():
                    nonlocal calls
                    calls += 1
                    return assign()

                pool._assign_requests_to_connections = counted
                answers = await asyncio.gather(*(http.get(url) for _ in range(30)))
                assert [r.status_code for r in answers] == [200] * 30
                assert server.connections == 3
                # one pass when a request arrives and one when its answer is closed: an
                # idle connection is handed to one waiting request, so none is turned
                # away and retried (each retry would be another pass)
                assert calls == 60
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_full_pool_makes_room_by_closing_an_idle_connection_to_another_origin(loop):
    async def main() -> None:
        first, second = await Server().start(), await Server().start()
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        try:
            async with client(timeout=10, limits=limits) as http:
                assert (await http.get(f"http://127.0.0.1:{first.port}/")).text == "ok"
                assert (await http.get(f"http://127.0.0.1:{second.port}/")).text == "ok"
                assert (await http.get(f"http://127.0.0.1:{first.port}/")).text == "ok"
                assert (first.connections, second.connections) == (2, 1)
                assert len(pool_of(http).connections) == 1
        finally:
            await first.close()
            await second.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_upstream_client_keeps_no_cookies(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with network.upstream_client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                r = await http.get(f"{base}/set-cookie")
                assert r.cookies.get("session") == "abc123"  # the answer still shows it
                await http.get(f"{base}/")
                assert server.cookies == [None, None]  # never sent back
                assert not http.cookies
        finally:
            await server.close()

    run_on(loop, main)


def test_received_chunks_are_handed_out_in_slices_without_losing_a_byte():
    protocol = network._Protocol()
    data = pattern(300_000)
    for piece in (data[:200_000], data[200_000:210_000], data[210_000:]):
        protocol.data_received(piece)
    out = []
    sizes = [65_536, 1, 65_536, 100_000, 65_536, 65_536, 65_536]
    for size in sizes:
        if not protocol.chunks:
            break
        piece = protocol.take(size)
        assert 0 < len(piece) <= size
        out.append(piece)
    while protocol.chunks:
        out.append(protocol.take(65_536))
    assert b"".join(out) == data
    assert protocol.buffered == 0 and protocol.offset == 0


async def _chunks(http: httpx.AsyncClient, url: str, whole: bool = True) -> list:
    extensions = {network.WHOLE_BODY: True} if whole else {}
    request = http.build_request("GET", url, extensions=extensions)
    response = await http.send(request, stream=True)
    try:
        return [chunk async for chunk in response.aiter_raw()]
    finally:
        await response.aclose()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_asked_for_whole_arrives_as_one_buffer_on_a_kept_alive_connection(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                for size in (1, 70_000, 3_000_000, 9_000_001):
                    chunks = await _chunks(http, f"{base}/big/{size}")
                    assert len(chunks) == 1 and type(chunks[0]) is bytearray
                    assert chunks[0] == pattern(size)
                # after the headers, the body in pieces (with /big/ its start came with them)
                chunks = await _chunks(http, f"{base}/drip/1000000/7/0.01")
                assert len(chunks) == 1 and chunks[0] == pattern(1_000_000)
                # not asked for: read through h11, at most 256 KiB at a time
                chunks = await _chunks(http, f"{base}/big/3000000", whole=False)
                assert len(chunks) > 1 and max(map(len, chunks)) <= network.READ_AHEAD_BYTES
                assert b"".join(chunks) == pattern(3_000_000)
                assert server.connections == 1  # every body was read to its end
                (conn,) = http._transport._pool.connections
                assert conn.is_idle()
                assert type(conn._connection) is network._HTTP11
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_body_over_the_whole_body_limit_is_read_in_chunks(loop, monkeypatch):
    monkeypatch.setattr(network, "WHOLE_BODY_MAX_BYTES", 1_000_000)

    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                assert len(await _chunks(http, f"{base}/big/1000000")) == 1
                chunks = await _chunks(http, f"{base}/big/1000001")
                assert len(chunks) > 1 and b"".join(chunks) == pattern(1_000_001)
        finally:
            await server.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_whole_body_cut_short_is_a_protocol_error_and_the_connection_is_not_reused(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                with pytest.raises(
                    httpx.RemoteProtocolError, match="received 1500000 bytes, expected 3000000"
                ):
                    await _chunks(http, f"{base}/cut/3000000")
                assert await _chunks(http, f"{base}/big/500000") == [pattern(500_000)]
                assert server.connections == 2
        finally:
            await server.close()

    run_on(loop, main)


def test_a_new_buffer_is_a_bytearray_of_the_size_asked_for():
    for size in (0, 1, 4096, 3_000_001):
        buf = network.new_buffer(size)
        assert type(buf) is bytearray and len(buf) == size
        buf[-1:] = b"x" if size else b""
    one, two = network.new_buffer(10), network.new_buffer(10)
    one[:] = b"a" * 10
    two[:] = b"b" * 10
    assert one == b"a" * 10 and two == b"b" * 10  # separate objects


@pytest.mark.parametrize("loop", LOOPS)
def test_a_whole_body_overwrites_every_byte_of_its_buffer(loop, monkeypatch):
    """The buffer is not zeroed first: whatever it held must never reach the caller,
    neither on a body that arrives whole nor on one cut short."""
    made = []

    def dirty(size: int) -> bytearray:
        buf = bytearray(b"\xaa" * size)  # stands for another answer's leftover bytes
        made.append(size)
        return buf

    monkeypatch.setattr(network, "new_buffer", dirty)

    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                for size in (1, 70_000, 3_000_000):
                    assert await _chunks(http, f"{base}/big/{size}") == [pattern(size)]
                assert await _chunks(http, f"{base}/drip/1000000/7/0.01") == [pattern(1_000_000)]
                with pytest.raises(httpx.RemoteProtocolError):
                    await _chunks(http, f"{base}/cut/3000000")
        finally:
            await server.close()

    run_on(loop, main)
    assert made == [1, 70_000, 3_000_000, 1_000_000, 3_000_000]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_whole_body_times_out_only_when_nothing_arrives_for_the_read_timeout(loop):
    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=httpx.Timeout(10, read=0.25)) as http:
                base = f"http://127.0.0.1:{server.port}"
                # 1.2 s in all, but never 0.25 s without a byte
                chunks = await _chunks(http, f"{base}/drip/2000000/12/0.1")
                assert chunks == [pattern(2_000_000)]
                with pytest.raises(httpx.ReadTimeout):  # a 0.5 s silence mid-body
                    await _chunks(http, f"{base}/drip/2000000/3/0.5")
        finally:
            await server.close()

    run_on(loop, main)


def test_received_chunks_are_copied_out_across_chunk_boundaries():
    protocol = network._Protocol()
    data = pattern(300_000)
    for piece in (data[:200_000], data[200_000:210_000], data[210_000:]):
        protocol.data_received(piece)
    out = bytearray(300_000)
    view, filled = memoryview(out), 0
    for size in (1, 150_000, 60_000, 89_999):
        while size and protocol.chunks:
            count = protocol.take_into(view[filled : filled + size])
            filled, size = filled + count, size - count
    assert out == data and filled == len(data)
    assert protocol.buffered == 0 and protocol.offset == 0 and not protocol.chunks


@pytest.mark.parametrize("loop", LOOPS)
def test_the_limited_readers_ask_for_large_bodies_whole(loop):
    from providers.http import LARGE_ANSWER_BYTES, read_limited, read_limited_parts

    async def main() -> None:
        server = await Server().start()
        try:
            async with client(timeout=10) as http:
                base = f"http://127.0.0.1:{server.port}"
                async with http.stream("GET", f"{base}/big/3000000") as response:
                    parts = await read_limited_parts(response, 4_000_000, "too big")
                assert len(parts) == 1 and parts[0] == pattern(3_000_000)
                async with http.stream("GET", f"{base}/big/3000000") as response:
                    body = await read_limited(response, 4_000_000, "too big")
                assert type(body) is bytes and body == pattern(3_000_000)  # callers get bytes
                small = LARGE_ANSWER_BYTES - 1  # small answers: as they come
                async with http.stream("GET", f"{base}/big/{small}") as response:
                    assert network.WHOLE_BODY not in response.request.extensions
                    assert b"".join(await read_limited_parts(response, small, "x")) == pattern(
                        small
                    )
        finally:
            await server.close()

    run_on(loop, main)
