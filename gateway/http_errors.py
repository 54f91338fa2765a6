"""The one place errors become HTTP answers, and the request body size limit.

Every error answer has the OpenAI shape `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, PayloadTooLarge, error_body
from gateway.usage import note_error

log = logging.getLogger("inkgate.http")

_STATUS_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(validation_error_body(exc), 400)


def validation_error_body(exc: RequestValidationError) -> dict:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        message = "We could not parse the JSON body of your request: it is not valid JSON."
        return error_body(message, "invalid_request_error", "invalid_json")
    param = _param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    elif first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    else:
        message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
        code = "invalid_value"
    return error_body(message, "invalid_request_error", code, param)


def install_error_handlers(app: FastAPI) -> None:
    # each handler also says why the request failed, for its usage row (gateway/usage.py)
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        note_error(request, exc.code, exc.message)
        return JSONResponse(exc.body(), exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = validation_error_body(exc)
        note_error(request, body["error"]["code"], body["error"]["message"])
        return JSONResponse(body, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, code = _STATUS_CODES.get(exc.status_code, ("api_error", "http_error"))
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "Unknown URL. See /docs for the API."
        note_error(request, code, message)
        return JSONResponse(
            error_body(message, type_, code), exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("The gateway had an internal error.", "server_error", "internal_error"), 500
        )


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None:
            # the server enforces Content-Length, so checking the declaration is enough
            if declared > limit:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # A chunked body: read it up to the limit, then replay it to the app.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > limit:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _message(self) -> str:
        return f"Request body too large: the limit is {self.max_bytes} bytes."

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(PayloadTooLarge(self._message()).body(), 413)
        await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
