"""Reference images from requests: data URLs, our own image URLs, or (when the operator
allows it, `INKGATE_FETCH_EXTERNAL_IMAGES`) other sites' http(s) URLs fetched with SSRF
protection.

Our own image URLs (path `/images/img_<id>.<ext>`, whatever the host) are read from the
store, never over HTTP. An external URL is fetched only when every address its host
resolves to is public; the connection goes to the checked address (with the original
Host and TLS name), so a DNS answer cannot change between the check and the connection.
Redirects are followed by hand and checked the same way; the whole fetch has a size and
a time limit, and what arrives must decode as an image.
"""

from __future__ import annotations

import binascii
import io
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import httpx
from PIL import Image

from gateway.errors import InvalidRequest
from gateway.flow.reference import shrink
from providers.base import ImageData, decode_base64

MAX_REFERENCE_BYTES = 20 * 1024 * 1024
# A small PNG can claim a huge canvas; decoding it would take gigabytes.
MAX_REFERENCE_PIXELS = 50_000_000
MAX_REFERENCES = 8
MAX_REDIRECTS = 3
FETCH_TIMEOUT_SECONDS = 20.0  # the whole fetch: DNS, every redirect, the body
EDIT_REFERENCE_SIDE = 1536
EXTERNAL_SETTING = "INKGATE_FETCH_EXTERNAL_IMAGES"

_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.I)
_OWN_IMAGE = re.compile(r"/images/(img_[A-Za-z0-9_-]{16,64})\.\w{2,5}$")
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^\s)>]+)")
_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
# Addresses that carry an IPv4 address the network may route to (RFC 6052 NAT64);
# 64:ff9b:1::/48 is for local NAT64 only and never public.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NOT_PUBLIC_V6 = (ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10"))

Resolver = Callable[[str, int], Awaitable[str]]
OwnImageLoader = Callable[[str], Awaitable[ImageData | None]]


# --- checking bytes ---------------------------------------------------------------------


def _decode_check(data: bytes, param: str, source: str) -> ImageData:
    """`data` as an image once Pillow has decoded it in full (magic bytes prove nothing)."""
    try:
        image = ImageData.from_bytes(data)
    except ValueError:
        raise InvalidRequest(f"{source} is not a PNG, JPEG, WebP or GIF", param=param) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if im.format not in _FORMATS:
                raise InvalidRequest(f"{source} is not a PNG, JPEG, WebP or GIF", param=param)
            if width * height > MAX_REFERENCE_PIXELS:
                raise InvalidRequest(
                    f"{source} is {width}x{height} pixels, more than this gateway reads",
                    param=param,
                )
            im.draft("RGB", (EDIT_REFERENCE_SIDE, EDIT_REFERENCE_SIDE))  # JPEG: less memory
            im.load()
    except InvalidRequest:
        raise
    except Exception:  # Pillow raises many kinds (OSError, SyntaxError, ...) on bad data
        raise InvalidRequest(f"{source} is damaged or not an image", param=param) from None
    return image


async def checked_image(data: bytes, param: str, source: str = "A reference image") -> ImageData:
    """`data` as `ImageData` after a full Pillow decode (in a worker thread); a 400 naming
    `param` when it is not a whole PNG, JPEG, WebP or GIF of a sane size."""
    return await anyio.to_thread.run_sync(_decode_check, data, param, source)


async def decode_data_url(url: str, param: str) -> ImageData:
    match = _DATA_URL.match(url)
    if not match:
        raise InvalidRequest(
            "Image data URLs must be base64 'data:image/...;base64,...'", param=param
        )
    try:
        data = decode_base64(url[match.end() :])
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("The image data URL is not valid base64", param=param) from exc
    if len(data) > MAX_REFERENCE_BYTES:
        raise InvalidRequest("A reference image is larger than 20 MB", param=param)
    return await checked_image(data, param)


async def fit_reference(image: ImageData, side: int = EDIT_REFERENCE_SIDE) -> ImageData:
    """`image` with its long side at most `side` px; unchanged when it already is
    (a worker thread does the Pillow work). Transparent images stay PNG, others JPEG."""
    return await anyio.to_thread.run_sync(shrink, image, side)


# --- addresses --------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped, 6to4, NAT64, IPv4-compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_public_address(addr: str) -> bool:
    """Whether `addr` is a public unicast address (and so is any IPv4 address inside it)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NOT_PUBLIC_V6):
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None:
            ip = inner
    return ip.is_global and not ip.is_multicast


async def resolve_public(host: str, port: int) -> str:
    """One public address of `host`; raises when any resolved address is not public."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"Cannot resolve the image host {host!r}") from exc
    addrs = [str(info[4][0]) for info in infos]
    if not addrs or not all(is_public_address(a) for a in addrs):
        raise InvalidRequest("Image URLs must point to a public internet address")
    return next((a for a in addrs if ":" not in a), addrs[0])  # IPv4 is routable more often


# --- fetching ---------------------------------------------------------------------------


def _split_checked(url: str, param: str) -> tuple[str, str, int, str]:
    """(scheme, ASCII host, port, Host header) of an http(s) URL without user info;
    a 400 otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("Image URLs must be http(s) or data URLs", param=param)
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("Image URLs with a user name or password are not fetched", param=param)
    try:
        port = parts.port
        parsed = httpx.URL(url)  # the IDNA form of the host, for DNS, Host and TLS
    except (ValueError, httpx.InvalidURL):
        port = 0
    if port == 0:
        raise InvalidRequest("The image URL has an invalid host or port", param=param)
    port = port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parsed.raw_host.decode("ascii"), port, parsed.netloc.decode("ascii")


async def _fetch_bytes(
    http: httpx.AsyncClient, url: str, param: str, max_bytes: int, resolve: Resolver
) -> bytes:
    limit = f"{max_bytes >> 20} MB" if max_bytes % (1 << 20) == 0 else f"{max_bytes} bytes"
    too_large = f"A reference image is larger than {limit}"
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, host_header = _split_checked(url, param)
        try:
            addr = await resolve(host, port)
        except InvalidRequest as exc:
            exc.param = exc.param or param
            raise
        parts = urlsplit(url)
        netloc = f"[{addr}]" if ":" in addr else addr
        target = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
        headers = {"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
        try:
            async with http.stream(
                "GET",
                target,
                headers=headers,
                follow_redirects=False,
                extensions={"sni_hostname": host},
                timeout=FETCH_TIMEOUT_SECONDS,
            ) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"Fetching the image URL failed with HTTP {response.status_code}",
                        param=param,
                    )
                if not response.headers.get("content-type", "").lower().startswith("image/"):
                    raise InvalidRequest("The image URL did not return an image", param=param)
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise InvalidRequest(too_large, param=param)
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise InvalidRequest(too_large, param=param)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                f"Could not fetch the image URL ({type(exc).__name__})", param=param
            ) from exc
    raise InvalidRequest("The image URL redirected too many times", param=param)


async def fetch_public_image(
    http: httpx.AsyncClient,
    url: str,
    *,
    param: str,
    max_bytes: int = MAX_REFERENCE_BYTES,
    timeout: float = FETCH_TIMEOUT_SECONDS,
    resolve: Resolver | None = None,
) -> ImageData:
    """The image at a public http(s) URL. Every hop must resolve to public addresses only
    (`resolve`, default `resolve_public`, raises otherwise); at most `max_bytes` and
    `timeout` seconds in all; the bytes must decode as a PNG, JPEG, WebP or GIF.
    Every refusal is an `InvalidRequest` naming `param`."""
    try:
        with anyio.fail_after(timeout):
            data = await _fetch_bytes(http, url, param, max_bytes, resolve or resolve_public)
    except TimeoutError:
        raise InvalidRequest(
            f"Fetching the image URL took longer than {timeout:g} seconds", param=param
        ) from None
    return await checked_image(data, param, "What the image URL returned")


# --- from requests ----------------------------------------------------------------------


async def resolve_image_url(
    url: str, http: httpx.AsyncClient, own_image: OwnImageLoader, param: str, *,
    allow_external: bool,
) -> ImageData:  # fmt: skip
    """The bytes behind an image URL: a data URL, one of our own images (read from the
    store), or, when `allow_external`, another site's image fetched by `fetch_public_image`."""
    if url.startswith("data:"):
        return await decode_data_url(url, param)
    own = _OWN_IMAGE.search(urlsplit(url).path)
    if own:
        image = await own_image(own.group(1))
        if image is not None:
            return image
    if not allow_external:
        missing = f"No image {own.group(1)} is stored on this gateway, and i" if own else "I"
        raise InvalidRequest(
            f"{missing}mage URLs from other sites are not fetched on this gateway "
            f"({EXTERNAL_SETTING} is off); send the image as a data URL",
            param=param,
            code="external_image_urls_disabled",
        )
    return await fetch_public_image(http, url, param=param)


async def collect_references(
    messages: list[dict], http: httpx.AsyncClient, own_image: OwnImageLoader, *,
    allow_external: bool,
) -> tuple[ImageData, ...]:  # fmt: skip
    """The image parts of the last user message, as bytes (see `resolve_image_url`)."""
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
            url = _part_url(part)
            if not url:
                raise InvalidRequest("image_url needs a 'url'", param=param)
            if len(refs) >= MAX_REFERENCES:
                raise InvalidRequest(f"At most {MAX_REFERENCES} reference images", param=param)
            refs.append(
                await resolve_image_url(url, http, own_image, param, allow_external=allow_external)
            )
        return tuple(refs)
    return ()


def _part_url(part: dict) -> str | None:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    return url if isinstance(url, str) and url else None


def _own_image_ids(content: object) -> list[str]:
    """Ids of our own images in an assistant message: markdown images in its text and
    `image_url` parts, in order, each once."""
    urls: list[str] = []
    parts = content if isinstance(content, list) else [content]
    for part in parts:
        if isinstance(part, str):
            urls += _MARKDOWN_IMAGE.findall(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            urls += _MARKDOWN_IMAGE.findall(str(part.get("text") or ""))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            urls += [url] if (url := _part_url(part)) else []
    ids = [m.group(1) for url in urls if (m := _OWN_IMAGE.search(urlsplit(url).path))]
    return list(dict.fromkeys(ids))


async def collect_edit_references(
    messages: list[dict], http: httpx.AsyncClient, own_image: OwnImageLoader, *,
    allow_external: bool,
) -> tuple[ImageData, ...]:  # fmt: skip
    """References for a plain image model in a chat that edits over several turns.

    The last user message's image parts (as `collect_references`), then our own images
    in the latest assistant message that has any (the picture being edited), at most
    `MAX_REFERENCES` in all, each scaled to at most `EDIT_REFERENCE_SIDE` px. Images in
    the assistant's messages are read from our store only: other sites' URLs there are
    ignored, never fetched.
    """
    refs = list(await collect_references(messages, http, own_image, allow_external=allow_external))
    for message in reversed(messages):
        if len(refs) >= MAX_REFERENCES:
            break
        if message.get("role") != "assistant":
            continue
        ids = _own_image_ids(message.get("content"))
        found = [image for image_id in ids if (image := await own_image(image_id)) is not None]
        if found:
            refs += found[: MAX_REFERENCES - len(refs)]
            break
    return tuple([await fit_reference(image) for image in refs])
