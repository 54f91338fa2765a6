"""API keys: stored as sha256 with a visible prefix; checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import select

from gateway.errors import AuthenticationFailed, NotFound
from gateway.limits import KeyLimits, check_rate
from storage.db import Database
from storage.tables import ApiKey, utcnow

KEY_PREFIX = "sk-ink-"
PREFIX_LEN = len(KEY_PREFIX) + 6
# last_used_at is a convenience, not an audit log: write it at most this often.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a stored key, or the master key (`key_id` None)."""

    key_id: str | None
    name: str
    limits: KeyLimits | None = None  # None: the master key, never limited

    @property
    def is_master(self) -> bool:
        return self.key_id is None


class KeyService:
    """Create, list, revoke and verify API keys."""

    def __init__(self, db: Database, master_key: str | None = None) -> None:
        self.db = db
        self._master_hash = hash_key(master_key) if master_key else None

    async def create(self, name: str, **limits) -> tuple[ApiKey, str]:
        """A new key: the row and the plaintext (shown once, never stored). `limits`
        are `ApiKey` limit columns (`rpm=60`, `allowed_models='["redink"]'`, ...)."""
        name = name.strip()
        if not name:
            raise ValueError("a key needs a name")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=secrets.token_hex(8),
            name=name[:200],
            prefix=plaintext[:PREFIX_LEN],
            key_hash=hash_key(plaintext),
            **limits,
        )
        async with self.db.session() as session:
            session.add(row)
            await session.commit()
        return row, plaintext

    async def list(self) -> list[ApiKey]:
        async with self.db.session() as session:
            result = await session.exec(select(ApiKey).order_by(ApiKey.created_at))
            return list(result.all())

    async def get(self, key_id: str) -> ApiKey:
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
        return row

    async def update(self, key_id: str, **fields) -> ApiKey:
        """Set the given columns (name, limits) of a key."""
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
            for name, value in fields.items():
                setattr(row, name, value)
            session.add(row)
            await session.commit()
            return row

    async def count(self) -> int:
        return len(await self.list())

    async def revoke(self, key_id: str) -> ApiKey:
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(row)
                await session.commit()
            return row

    async def verify(self, token: str) -> Principal | None:
        """The principal for a presented key, or None. Constant-time comparisons."""
        if not token:
            return None
        presented = hash_key(token)
        if self._master_hash is not None and hmac.compare_digest(presented, self._master_hash):
            return Principal(key_id=None, name="master")
        async with self.db.session() as session:
            rows = (
                await session.exec(select(ApiKey).where(ApiKey.prefix == token[:PREFIX_LEN]))
            ).all()
            match = None
            for row in rows:
                # compare every candidate so timing does not depend on which matched
                if hmac.compare_digest(presented, row.key_hash):
                    match = row
            if match is None or match.revoked_at is not None:
                return None
            now = utcnow()
            if match.expires_at is not None and now >= _aware(match.expires_at):
                return None
            last = match.last_used_at
            if last is None or now - _aware(last) > LAST_USED_RESOLUTION:
                match.last_used_at = now
                session.add(match)
                await session.commit()
            return Principal(key_id=match.id, name=match.name, limits=KeyLimits.of(match))


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


async def require_key(request: Request) -> Principal:
    """FastAPI dependency: the calling principal, or 401 in the OpenAI shape."""
    token = bearer_token(request)
    if not token:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    principal = await request.app.state.services.keys.verify(token)
    if principal is None:
        # never echo the presented key
        raise AuthenticationFailed(
            "Incorrect API key provided, or the key was revoked or has expired."
        )
    request.state.principal = principal
    await check_rate(request.app.state.services.db, principal)
    return principal


CurrentKey = Annotated[Principal, Depends(require_key)]
