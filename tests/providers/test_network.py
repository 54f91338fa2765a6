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
                if target == "/stall-upload":
                    await asyncio.sleep(30)  # never reads the body
                    return
                body = await reader.readexactly(length) if length else b""
                if target == "/slow":
                    await asyncio.sleep(30)
                    return
                if target.startswith("/big/"):
                    answer = pattern(int(target.rsplit("/", 1)[1]))
                elif target == "/echo":
                    answer = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
                else:
                    answer = b"ok"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer
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
    mocked = use_asyncio_backend(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: None)))
    assert isinstance(mocked._transport, httpx.MockTransport)  # left as it is


async def test_the_gateway_client_uses_it(services):
    assert isinstance(services.http._transport._pool._network_backend, AsyncioBackend)
