"""Absolute URLs for what the gateway returns, and signed download links."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time

from fastapi import Request

from gateway.settings import Settings

DOWNLOAD_LINK_TTL = 7 * 24 * 3600


def _trusted(settings: Settings, request: Request) -> bool:
    if not settings.trusted_proxies or request.client is None:
        return False
    try:
        addr = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(addr in net for net in settings.trusted_proxies)


def client_ip(settings: Settings, request: Request) -> str:
    """The caller's address: the peer, or the first `X-Forwarded-For` hop when the peer
    is a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    if _trusted(settings, request):
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        try:
            return str(ipaddress.ip_address(forwarded))
        except ValueError:
            pass
    return peer


def base_url(settings: Settings, request: Request) -> str:
    """`INKGATE_PUBLIC_BASE_URL`, else the request's own scheme and host.

    `X-Forwarded-Proto/Host` are used only when the direct peer is a trusted proxy.
    """
    if settings.public_base_url:
        return settings.public_base_url
    scheme = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    if _trusted(settings, request):
        fwd_proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
        fwd_host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if fwd_proto in ("http", "https"):
            scheme = fwd_proto
        if fwd_host:
            host = fwd_host
        prefix = request.headers.get("x-forwarded-prefix", "").split(",")[0].strip().rstrip("/")
        if prefix.startswith("/"):
            return f"{scheme}://{host}{prefix}"
    return f"{scheme}://{host}"


def image_url(base: str, image_id: str, ext: str) -> str:
    return f"{base}/images/{image_id}.{ext}"


def _download_sig(secret: bytes, post_id: str, owner: str, expires: int) -> str:
    msg = f"download:{post_id}:{owner}:{expires}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def signed_download_url(
    settings: Settings, base: str, post_id: str, owner_key_id: str | None, now: float | None = None
) -> str:
    """A ZIP link that works without a header (chat clients open it in a browser)."""
    expires = int((now or time.time()) + DOWNLOAD_LINK_TTL)
    sig = _download_sig(settings.signing_secret(), post_id, owner_key_id or "master", expires)
    return f"{base}/v1/posts/{post_id}/download?expires={expires}&sig={sig}"


def check_download_signature(
    settings: Settings, post_id: str, owner_key_id: str | None, expires: int, sig: str
) -> bool:
    if expires < time.time():
        return False
    expected = _download_sig(settings.signing_secret(), post_id, owner_key_id or "master", expires)
    return hmac.compare_digest(expected, sig)


def _video_sig(secret: bytes, video_id: str, owner: str, expires: int) -> str:
    msg = f"video:{video_id}:{owner}:{expires}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def signed_video_url(
    settings: Settings, base: str, video_id: str, owner_key_id: str | None, now: float | None = None
) -> str:
    """A link to a video's MP4 that works without a header (chat clients open it)."""
    expires = int((now or time.time()) + DOWNLOAD_LINK_TTL)
    sig = _video_sig(settings.signing_secret(), video_id, owner_key_id or "master", expires)
    return f"{base}/v1/videos/{video_id}/content?expires={expires}&sig={sig}"


def check_video_signature(
    settings: Settings, video_id: str, owner_key_id: str | None, expires: int, sig: str
) -> bool:
    if expires < time.time():
        return False
    expected = _video_sig(settings.signing_secret(), video_id, owner_key_id or "master", expires)
    return hmac.compare_digest(expected, sig)
