"""What every HTTP provider does the same way: error mapping and bounded reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterator

import httpx

from gateway.errors import GatewayError, UpstreamError, map_upstream_errors
from providers.network import WHOLE_BODY

log = logging.getLogger("inkgate.upstream")


LOGGED_BODY_CHARS = 2000


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


@contextlib.contextmanager
def upstream_call(provider: str, secret: str | None) -> Iterator[None]:
    """`map_upstream_errors`, plus: the upstream's error body goes to the log (for the
    operator, key redacted), and `secret` (the API key) never shows in a client message;
    some upstreams quote the key in their errors."""
    try:
        with map_upstream_errors(provider):
            yield
    except GatewayError as exc:
        cause = exc.__cause__
        if isinstance(cause, httpx.HTTPStatusError):
            try:
                body = cause.response.text[:LOGGED_BODY_CHARS]
            except httpx.ResponseNotRead:
                body = "(body not read)"
            log.warning(
                "upstream %s answered %s %s: %s",
                provider, cause.response.status_code, cause.request.url.path, _redact(body, secret),
            )  # fmt: skip
        if secret and secret in exc.message:
            exc.message = _redact(exc.message, secret)
            exc.args = (exc.message,)
        raise


# Answers at least this large (or of unknown size) take a turn (`large_answer_turn`).
LARGE_ANSWER_BYTES = 256 * 1024
# Large answers read at the same time; a few, so that reading one is never all there is
# to do while another waits for the network.
LARGE_ANSWER_TURNS = 2
# The longest an answer waits for its turn before it is read anyway.
LARGE_ANSWER_TURN_WAIT = 0.5

_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def large_answer_turn() -> AsyncIterator[None]:
    """Read large upstream answers a few at a time, first come first served.

    Why: when many image answers arrive at once (a post's pages, a burst of clients
    whose upstream calls started together), reading them all at once shares the event
    loop between them, so every one finishes as late as the last. Taking turns, the
    first answers are done (decoded, stored, returned) early, and the next burst of
    calls from those clients is spread out instead of arriving together again.

    A turn is waited for at most `LARGE_ANSWER_TURN_WAIT` seconds, and a slow or
    stalled upstream holding one costs the others no more than that.
    """
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = asyncio.Semaphore(LARGE_ANSWER_TURNS)
    try:
        await asyncio.wait_for(turns.acquire(), LARGE_ANSWER_TURN_WAIT)
    except TimeoutError:
        yield  # waited long enough: read alongside the others
        return
    try:
        yield
    finally:
        turns.release()


async def read_limited(response: httpx.Response, limit: int, too_large: str) -> bytes:
    """The whole body, refusing more than `limit` bytes (declared or streamed).

    Joining the chunks once measured ~1 ms less CPU per 2.7 MB answer than
    `response.aread()`, and the limit stops a runaway body early. Large bodies take
    their turn (`large_answer_turn`).
    """
    body = joined(await read_limited_parts(response, limit, too_large))
    return body if type(body) is bytes else bytes(body)


async def read_limited_parts(response: httpx.Response, limit: int, too_large: str) -> list[bytes]:
    """`read_limited` without the final join: the pieces as received, for a caller that
    joins them in a worker thread (a 3 MB copy less on the event loop).

    A large answer with a declared length usually arrives as one piece: a `bytearray`,
    received straight into it (`providers.network.WHOLE_BODY`)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UpstreamError(too_large, retryable=False)
    if declared.isdigit() and int(declared) < LARGE_ANSWER_BYTES:
        return await _read_chunks(response, limit, too_large)
    # Read whole, into one buffer, where the connection can (`providers.network`). httpx
    # hands httpcore this very dict, which its connection reads when the body is read.
    with contextlib.suppress(RuntimeError):  # a response made without a request
        response.request.extensions[WHOLE_BODY] = True
    async with large_answer_turn():
        return await _read_chunks(response, limit, too_large)


def joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _read_chunks(response: httpx.Response, limit: int, too_large: str) -> list[bytes]:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise UpstreamError(too_large, retryable=False)
        chunks.append(chunk)
    return chunks
