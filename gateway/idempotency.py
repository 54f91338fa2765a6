"""`Idempotency-Key` on `POST /v1/...`: a retried request replays the first answer
instead of generating (and paying) again; and `x-should-retry: false` on failed
generations, so SDKs that retry 5xx by default (the OpenAI SDK does, twice) do not
start the same expensive work again.

The first request with a key records it (`in_progress`), runs, and stores its status,
headers and body — a streamed answer too, as it went out. Later requests with the same
key and caller:
- same request body, finished → the stored answer, with `Idempotent-Replayed: true`;
- same body, still running → 409 (the OpenAI SDK retries 409 with backoff, so it
  receives the answer once ready);
- a different body → 400: a key names one request.

Keys are scoped to the caller's credential (its sha256), kept 24 hours. A run that a
crash left `in_progress` may be taken over after 15 minutes. Answers with status 401
(wrong key) are not kept.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body
from storage.db import Database
from storage.tables import IdempotencyRecord

KEEP_SECONDS = 24 * 3600
ABANDONED_SECONDS = 15 * 60
MAX_KEY_LENGTH = 255
EXPENSIVE = ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits")
MAX_STORED_BYTES = 8 * 1024 * 1024  # b64_json answers larger than this are not kept


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Idempotency:
    """Pure ASGI middleware (answers are captured as they stream)."""

    def __init__(self, app: ASGIApp, db: Callable[[], Database | None], clock=time.time) -> None:
        self.app = app
        self.db = db
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        send = self._no_retry_on_failure(scope, send)
        key = _header(scope, b"idempotency-key")
        db = self.db()
        if key is None or db is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH:
            await self._error(
                send, 400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters."
            )
            return
        # the whole body (BodySizeLimit, outside, has bounded it) to compare requests
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        credential = _header(scope, b"authorization") or ""
        owner = hashlib.sha256(credential.encode()).hexdigest()
        fingerprint = hashlib.sha256(scope["path"].encode() + b"\n" + bytes(body)).hexdigest()
        record_id = hashlib.sha256(f"{owner}:{key}".encode()).hexdigest()

        claimed = await self._claim(db, record_id, fingerprint)
        if claimed is not True:
            await self._answer_existing(send, claimed, fingerprint)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        captured: dict = {"status": 500, "headers": [], "body": bytearray(), "too_big": False}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body" and not captured["too_big"]:
                captured["body"] += message.get("body", b"")
                if len(captured["body"]) > MAX_STORED_BYTES:
                    captured["too_big"] = True
                    captured["body"] = bytearray()
            await send(message)

        try:
            await self.app(scope, replay, capture)
        finally:
            await self._finish(db, record_id, captured)

    # -- records ------------------------------------------------------------------

    async def _claim(self, db: Database, record_id: str, fingerprint: str):
        """True when this request runs; else the existing record."""
        now = self.clock()
        table = IdempotencyRecord.__table__
        async with db.writing(), db.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.created_at < now - KEEP_SECONDS))
        try:
            async with db.writing(), db.engine.begin() as conn:
                await conn.execute(
                    table.insert().values(
                        id=record_id, fingerprint=fingerprint, state="in_progress",
                        created_at=now, updated_at=now,
                    )
                )  # fmt: skip
            return True
        except IntegrityError:
            pass
        async with db.session() as session:
            row = (
                await session.execute(
                    select(IdempotencyRecord).where(IdempotencyRecord.id == record_id)
                )
            ).scalar_one_or_none()
        if row is None:  # expired and deleted between the two statements
            return await self._claim(db, record_id, fingerprint)
        if (
            row.state == "in_progress"
            and row.updated_at < now - ABANDONED_SECONDS
            and row.fingerprint == fingerprint
        ):
            async with db.writing(), db.engine.begin() as conn:
                taken = await conn.execute(
                    update(table)
                    .where(table.c.id == record_id, table.c.updated_at == row.updated_at)
                    .values(updated_at=now)
                )
            if taken.rowcount == 1:
                return True
        return row

    async def _finish(self, db: Database, record_id: str, captured: dict) -> None:
        table = IdempotencyRecord.__table__
        async with db.writing(), db.engine.begin() as conn:
            if captured["status"] == 401 or captured["too_big"]:
                await conn.execute(delete(table).where(table.c.id == record_id))
                return
            await conn.execute(
                update(table)
                .where(table.c.id == record_id)
                .values(
                    state="done",
                    status=captured["status"],
                    headers=json.dumps(captured["headers"]),
                    body=bytes(captured["body"]),
                    updated_at=self.clock(),
                )
            )

    async def _answer_existing(self, send: Send, row: IdempotencyRecord, fingerprint: str) -> None:
        if row.fingerprint != fingerprint:
            await self._error(
                send, 400,
                "This Idempotency-Key was used with a different request; use a new key.",
                code="idempotency_key_reused",
            )  # fmt: skip
            return
        if row.state != "done":
            await self._error(
                send, 409,
                "A request with this Idempotency-Key is still running; retry shortly.",
                code="idempotency_key_in_use",
            )  # fmt: skip
            return
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in json.loads(row.headers or "[]")
            if k.lower() != "content-length"
        ]
        headers += [
            (b"content-length", str(len(row.body or b"")).encode()),
            (b"idempotent-replayed", b"true"),
        ]
        await send({"type": "http.response.start", "status": row.status, "headers": headers})
        await send({"type": "http.response.body", "body": row.body or b""})

    async def _error(
        self, send: Send, status: int, message: str, code: str = "invalid_idempotency_key"
    ) -> None:
        body = error_body(message, "invalid_request_error", code, "Idempotency-Key")
        response = JSONResponse(body, status)
        await response({"type": "http"}, _nothing, send)

    @staticmethod
    def _no_retry_on_failure(scope: Scope, send: Send) -> Send:
        """A failed generation says `x-should-retry: false`: retrying would start it again."""
        if scope["path"] not in EXPENSIVE:
            return send

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 500:
                headers = [h for h in message.get("headers", []) if h[0] != b"x-should-retry"]
                message = {**message, "headers": [*headers, (b"x-should-retry", b"false")]}
            await send(message)

        return wrapped


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
