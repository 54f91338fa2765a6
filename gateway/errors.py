"""One error hierarchy and one way to write it: the OpenAI error body.

Every failure a client can see is a `GatewayError`. Upstream failures are
translated in exactly one place, `map_upstream_errors()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import httpx

log = logging.getLogger("inkgate.errors")


class GatewayError(Exception):
    """An error with an HTTP status and the OpenAI error fields.

    `type` is the OpenAI error type (`invalid_request_error`, ...), `code` a
    machine-readable code, `param` the offending request field, `retry_after`
    seconds for a `Retry-After` header. `retryable` says whether the flow may try
    the same call again (transient upstream trouble), independent of HTTP status.
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(round(self.retry_after))))
        return headers


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContentPolicyViolation(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "content_policy_violation"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    retryable = True


def _upstream_message(response: httpx.Response) -> str:
    """A short, secret-free description of an upstream error answer."""
    text = ""
    try:
        data = response.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            text = str(err.get("message") or "")
        elif isinstance(err, str):
            text = err
        elif isinstance(data, dict):
            text = str(data.get("message") or data.get("msg") or "")
    except (ValueError, json.JSONDecodeError):
        text = response.text[:200] if response.content else ""
    return text[:300]


def upstream_status_error(provider: str, response: httpx.Response) -> GatewayError:
    """Translate an upstream HTTP error answer into a gateway error."""
    status = response.status_code
    detail = _upstream_message(response)
    suffix = f": {detail}" if detail else ""
    if status in (401, 403):
        return UpstreamError(
            f"Upstream provider '{provider}' rejected the gateway's credentials ({status}); "
            "your API key is fine, the gateway's upstream configuration is not",
            code="upstream_auth_failed",
            retryable=False,
        )
    if status == 429:
        retry_after = None
        raw = response.headers.get("retry-after")
        if raw:
            with contextlib.suppress(ValueError):
                retry_after = float(raw)
        return RateLimited(
            f"Upstream provider '{provider}' is rate limiting{suffix}",
            retry_after=retry_after or 5,
        )
    if status in (400, 422) and _looks_like_safety(detail):
        return ContentPolicyViolation(f"Upstream provider '{provider}' refused the prompt{suffix}")
    if 400 <= status < 500:
        return UpstreamError(
            f"Upstream provider '{provider}' rejected the request ({status}){suffix}",
            code="upstream_bad_request",
            retryable=False,
        )
    return UpstreamError(f"Upstream provider '{provider}' failed ({status}){suffix}")


def _looks_like_safety(text: str) -> bool:
    t = text.lower()
    return any(w in t for w in ("safety", "content_policy", "content policy", "moderation"))


@contextlib.contextmanager
def map_upstream_errors(provider: str) -> Iterator[None]:
    """Translate httpx exceptions raised while talking to an upstream."""
    try:
        yield
    except GatewayError:
        raise
    except httpx.HTTPStatusError as exc:
        raise upstream_status_error(provider, exc.response) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"Upstream provider '{provider}' timed out") from exc
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"Could not reach upstream provider '{provider}': {type(exc).__name__}"
        ) from exc
