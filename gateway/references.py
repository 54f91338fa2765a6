"""Reference images from chat messages: data URLs, our own image URLs, or
public http(s) URLs fetched with SSRF protection.

A URL is fetched only when every address its host resolves to is public; the
connection goes to the checked address (with the original Host and TLS name),
so a DNS answer cannot change between the check and the connection. Redirects
are followed by hand and checked the same way.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import httpx
import pybase64

from gateway.errors import InvalidRequest
from providers.base import ImageData

MAX_REFERENCE_BYTES = 20 * 1024 * 1024
MAX_REFERENCES = 8
MAX_REDIRECTS = 3
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.I)
_OWN_IMAGE = re.compile(r"/images/(img_[A-Za-z0-9_-]{16,64})\.\w{2,5}$")


def decode_data_url(url: str, param: str) -> ImageData:
    match = _DATA_URL.match(url)
    if not match:
        raise InvalidRequest(
            "Image data URLs must be base64 'data:image/...;base64,...'", param=param
        )
    try:
        data = pybase64.b64decode(url[match.end() :], validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("The image data URL is not valid base64", param=param) from exc
    if len(data) > MAX_REFERENCE_BYTES:
        raise InvalidRequest("A reference image is larger than 20 MB", param=param)
    try:
        return ImageData.from_bytes(data)
    except ValueError as exc:
        raise InvalidRequest(
            "A reference image is not a PNG, JPEG, WebP or GIF", param=param
        ) from exc


def is_public_address(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_public(host: str, port: int) -> str:
    """One public address of `host`; raises when any resolved address is not public."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidRequest(f"Cannot resolve the image host {host!r}") from exc
    addrs = [str(info[4][0]) for info in infos]
    if not addrs or not all(is_public_address(a) for a in addrs):
        raise InvalidRequest("Image URLs must point to a public internet address")
    return addrs[0]


async def fetch_public_image(
    http: httpx.AsyncClient,
    url: str,
    *,
    param: str,
    max_bytes: int = MAX_REFERENCE_BYTES,
    resolve: Callable[[str, int], Awaitable[str]] = resolve_public,
) -> ImageData:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("Image URLs must be http(s) or data URLs", param=param)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addr = await resolve(parts.hostname, port)
        except InvalidRequest as exc:
            exc.param = exc.param or param
            raise
        netloc = f"[{addr}]" if ":" in addr else addr
        target = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
        try:
            async with http.stream(
                "GET",
                target,
                headers=headers,
                follow_redirects=False,
                extensions={"sni_hostname": parts.hostname},
                timeout=30,
            ) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"Fetching the image URL failed with HTTP {response.status_code}",
                        param=param,
                    )
                if not response.headers.get("content-type", "").startswith("image/"):
                    raise InvalidRequest("The image URL did not return an image", param=param)
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise InvalidRequest("A reference image is larger than 20 MB", param=param)
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                f"Could not fetch the image URL ({type(exc).__name__})", param=param
            ) from exc
        try:
            return ImageData.from_bytes(b"".join(chunks))
        except ValueError as exc:
            raise InvalidRequest(
                "The image URL did not return a PNG, JPEG, WebP or GIF", param=param
            ) from exc
    raise InvalidRequest("The image URL redirected too many times", param=param)


OwnImageLoader = Callable[[str], Awaitable[ImageData | None]]


async def collect_references(
    messages: list[dict], http: httpx.AsyncClient, own_image: OwnImageLoader
) -> tuple[ImageData, ...]:
    """The image parts of the last user message, as bytes."""
    for m_index in range(len(messages) - 1, -1, -1):
        message = messages[m_index]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            return ()
        refs: list[ImageData] = []
        for p_index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            param = f"messages[{m_index}].content[{p_index}].image_url"
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise InvalidRequest("image_url needs a 'url'", param=param)
            if len(refs) >= MAX_REFERENCES:
                raise InvalidRequest(f"At most {MAX_REFERENCES} reference images", param=param)
            refs.append(await resolve_image_url(url, http, own_image, param))
        return tuple(refs)
    return ()


async def resolve_image_url(
    url: str, http: httpx.AsyncClient, own_image: OwnImageLoader, param: str
) -> ImageData:
    """The bytes behind an image URL: a data URL, one of our own images, or a public URL."""
    if url.startswith("data:"):
        return decode_data_url(url, param)
    own = _OWN_IMAGE.search(urlsplit(url).path)
    if own:
        image = await own_image(own.group(1))
        if image is not None:
            return image
    return await fetch_public_image(http, url, param=param)
