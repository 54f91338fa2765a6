"""Dashboard sign-in: admin users, database sessions, CSRF and throttling.

- The first admin is made at `/admin/setup` with the one-time setup token printed at
  start (kept only as a sha256 in `app_settings`, valid 24 h) or with
  `INKGATE_MASTER_KEY`.
- Passwords are hashed with scrypt (n=2**15, r=8, p=1, a 16-byte salt), off the event
  loop; the stored form names its parameters, so they can be raised later.
- A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure over
  https). Only its sha256 is stored, so a database dump signs nobody in. Sessions
  live in the database: they survive restarts and work across replicas. They end
  after `INKGATE_ADMIN_SESSION_HOURS` without use (sliding), at sign-out, and at a
  password change (other sessions of that user).
- Every state-changing request with a session carries the session's CSRF token in
  `X-CSRF-Token` (or a `csrf_token` form field).
- Sign-in is throttled: 5 failures per 15 minutes per user name and address, and
  20 per address whatever the name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from gateway.auth import Principal, bearer_token
from gateway.errors import AuthenticationFailed, GatewayError, InvalidRequest, PermissionDenied
from gateway.urls import client_ip
from storage.db import Database
from storage.tables import AdminSession, AdminSignInFailure, AdminUser, AppSetting, utcnow

SESSION_COOKIE = "inkgate_session"
CSRF_HEADER = "x-csrf-token"
SETUP_TOKEN_SETTING = "admin_setup_tokens"
SETUP_TOKEN_TTL = 24 * 3600
THROTTLE_WINDOW = 15 * 60
THROTTLE_PER_USER = 5
THROTTLE_PER_ADDRESS = 20
MIN_PASSWORD = 10
# last_seen_at (and so the sliding expiry) is written at most this often
TOUCH_EVERY = 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class SignInThrottled(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "sign_in_throttled"


class CsrfFailed(PermissionDenied):
    code = "csrf_failed"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=32
    )


def hash_password_sync(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, **_SCRYPT)
    params = f"n={_SCRYPT['n']},r={_SCRYPT['r']},p={_SCRYPT['p']}"
    b64 = base64.b64encode
    return f"scrypt${params}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password_sync(password: str, stored: str) -> bool:
    try:
        scheme, params, salt, digest = stored.split("$")
        values = dict(part.split("=") for part in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), n, r, p)
    except (ValueError, KeyError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(hash_password_sync, password)


async def verify_password(password: str, stored: str) -> bool:
    return await anyio.to_thread.run_sync(verify_password_sync, password, stored)


# a hash to check against when the user does not exist, so timing does not tell
_DUMMY_HASH = hash_password_sync(secrets.token_hex(8))


def check_new_password(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(
            f"The password needs at least {MIN_PASSWORD} characters.", param="password"
        )
    if len(password) > 1024:
        raise InvalidRequest(
            "The password is too long (1024 characters at most).", param="password"
        )
    if username and password.lower() == username.lower():
        raise InvalidRequest("The password must not be the user name.", param="password")


def check_username(username: str) -> str:
    username = username.strip()
    if not 1 <= len(username) <= 64 or any(c.isspace() or not c.isprintable() for c in username):
        raise InvalidRequest("A user name has 1–64 characters and no spaces.", param="username")
    return username


@dataclass(frozen=True)
class SignedIn:
    """A valid session: who, and the CSRF token its forms must send back."""

    session_id: str
    user_id: str
    username: str
    csrf_token: str
    expires_at: float


class AdminAuth:
    """Users, sessions and sign-in throttling, all in the database."""

    def __init__(self, db: Database, *, session_hours: float = 12.0, master_key: str | None = None):
        self.db = db
        self.session_seconds = session_hours * 3600
        self._master_hash = _sha256(master_key) if master_key else None

    # -- the first admin ------------------------------------------------------------

    async def has_admin(self) -> bool:
        async with self.db.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(AdminUser))).scalar_one()
        return count > 0

    async def new_setup_token(self, now: float | None = None) -> str | None:
        """A one-time token for `/admin/setup`, or None when an admin exists. Only its
        hash is kept (several replicas may each print one; each works once)."""
        if await self.has_admin():
            return None
        now = now or time.time()
        token = "setup-" + secrets.token_urlsafe(18)
        async with self.db.session() as session:
            row = await session.get(AppSetting, SETUP_TOKEN_SETTING)
            tokens = json.loads(row.value) if row else {}
            tokens = {h: t for h, t in tokens.items() if t > now}
            tokens[_sha256(token)] = now + SETUP_TOKEN_TTL
            if row is None:
                row = AppSetting(name=SETUP_TOKEN_SETTING, value="{}")
            row.value, row.updated_at = json.dumps(tokens), now
            session.add(row)
            await session.commit()
        return token

    async def _setup_token_valid(self, token: str, now: float) -> bool:
        if self._master_hash and hmac.compare_digest(_sha256(token), self._master_hash):
            return True
        async with self.db.session() as session:
            row = await session.get(AppSetting, SETUP_TOKEN_SETTING)
        tokens = json.loads(row.value) if row else {}
        presented = _sha256(token)
        return any(hmac.compare_digest(presented, h) and t > now for h, t in tokens.items())

    async def create_first_admin(self, token: str, username: str, password: str) -> AdminUser:
        now = time.time()
        if await self.has_admin():
            raise PermissionDenied("An admin already exists: sign in instead.", code="setup_done")
        if not token or not await self._setup_token_valid(token.strip(), now):
            raise AuthenticationFailed(
                "The setup token is wrong or expired. Use the one printed at start, or "
                "INKGATE_MASTER_KEY.",
                code="invalid_setup_token",
            )
        username = check_username(username)
        check_new_password(password, username)
        user = AdminUser(
            id=secrets.token_hex(8), username=username, password_hash=await hash_password(password)
        )
        try:
            async with self.db.session() as session:
                # the setup row doubles as a lock: two concurrent setups cannot both win
                marker = AppSetting(name="admin_setup_done", value=username, updated_at=now)
                session.add(marker)
                session.add(user)
                await session.execute(
                    delete(AppSetting).where(AppSetting.name == SETUP_TOKEN_SETTING)
                )
                await session.commit()
        except IntegrityError:
            raise PermissionDenied(
                "An admin already exists: sign in instead.", code="setup_done"
            ) from None
        return user

    async def add_user(self, username: str, password: str) -> AdminUser:
        """Another admin (the CLI's `inkgate admin create-user`)."""
        username = check_username(username)
        check_new_password(password, username)
        user = AdminUser(
            id=secrets.token_hex(8), username=username, password_hash=await hash_password(password)
        )
        try:
            async with self.db.session() as session:
                session.add(user)
                await session.commit()
        except IntegrityError:
            raise InvalidRequest(f"A user named {username!r} exists.", param="username") from None
        return user

    async def reset_password(self, username: str, password: str) -> None:
        """Set a user's password without the old one (the CLI, for a lost password);
        every session of the user ends and the sign-in throttle for the name is cleared."""
        async with self.db.session() as session:
            query = select(AdminUser).where(AdminUser.username == username.strip())
            user = (await session.execute(query)).scalars().first()
        if user is None:
            raise InvalidRequest(f"No admin named {username!r}.", param="username")
        check_new_password(password, user.username)
        new_hash = await hash_password(password)
        async with self.db.session() as session:
            user = await session.get(AdminUser, user.id)
            user.password_hash, user.password_changed_at = new_hash, utcnow()
            session.add(user)
            await session.execute(delete(AdminSession).where(AdminSession.user_id == user.id))
            await session.execute(
                delete(AdminSignInFailure).where(
                    AdminSignInFailure.username == user.username.lower()
                )
            )
            await session.commit()

    # -- sign-in ----------------------------------------------------------------------

    async def _throttled(self, username: str, ip: str, now: float) -> float | None:
        """Seconds until the next attempt is allowed, or None."""
        t = AdminSignInFailure.__table__
        since = now - THROTTLE_WINDOW
        async with self.db.engine.connect() as conn:
            pair = (
                await conn.execute(
                    select(func.count(), func.min(t.c.at)).where(
                        t.c.username == username.lower(), t.c.ip == ip, t.c.at > since
                    )
                )
            ).one()
            address = (
                await conn.execute(
                    select(func.count(), func.min(t.c.at)).where(t.c.ip == ip, t.c.at > since)
                )
            ).one()
        for (count, first), cap in ((pair, THROTTLE_PER_USER), (address, THROTTLE_PER_ADDRESS)):
            if count >= cap:
                return max(1.0, first + THROTTLE_WINDOW - now)
        return None

    async def sign_in(
        self, username: str, password: str, *, ip: str, user_agent: str = ""
    ) -> tuple[str, SignedIn]:
        """(cookie token, session), or raises 401 / 429. The same message whether the
        user or the password was wrong."""
        now = time.time()
        username = username.strip()[:64]
        wait = await self._throttled(username, ip, now)
        if wait is not None:
            raise SignInThrottled(
                f"Too many failed sign-ins. Try again in {int(wait // 60) + 1} minutes.",
                retry_after=wait,
            )
        async with self.db.session() as session:
            query = select(AdminUser).where(AdminUser.username == username)
            user = (await session.execute(query)).scalars().first()
        ok = await verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok:
            async with self.db.session() as session:
                session.add(AdminSignInFailure(username=username.lower(), ip=ip, at=now))
                await session.commit()
            raise AuthenticationFailed("Wrong user name or password.", code="invalid_credentials")
        return await self._new_session(user, ip=ip, user_agent=user_agent, now=now)

    async def _new_session(
        self, user: AdminUser, *, ip: str, user_agent: str, now: float
    ) -> tuple[str, SignedIn]:
        token = secrets.token_urlsafe(32)
        row = AdminSession(
            id=_sha256(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(24),
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.session_seconds,
            ip=ip[:64],
            user_agent=user_agent[:200] or None,
        )
        async with self.db.session() as session:
            session.add(row)
            await session.commit()
        return token, SignedIn(row.id, user.id, user.username, row.csrf_token, row.expires_at)

    async def session(self, token: str, now: float | None = None) -> SignedIn | None:
        """The live session for a cookie token; renews its sliding expiry."""
        if not token or len(token) > 200:
            return None
        now = now or time.time()
        sid = _sha256(token)
        async with self.db.session() as session:
            row = await session.get(AdminSession, sid)
            if row is None:
                return None
            if row.expires_at <= now:
                await session.delete(row)
                await session.commit()
                return None
            user = await session.get(AdminUser, row.user_id)
            if user is None:
                return None
            if now - row.last_seen_at >= TOUCH_EVERY:
                row.last_seen_at, row.expires_at = now, now + self.session_seconds
                session.add(row)
                await session.commit()
            return SignedIn(row.id, user.id, user.username, row.csrf_token, row.expires_at)

    async def sign_out(self, session_id: str) -> None:
        async with self.db.session() as session:
            await session.execute(delete(AdminSession).where(AdminSession.id == session_id))
            await session.commit()

    async def change_password(self, signed_in: SignedIn, current: str, new: str) -> None:
        """Checks the current password; ends every other session of the user."""
        async with self.db.session() as session:
            user = await session.get(AdminUser, signed_in.user_id)
        if user is None or not await verify_password(current, user.password_hash):
            raise InvalidRequest("The current password is wrong.", param="current_password")
        check_new_password(new, user.username)
        new_hash = await hash_password(new)
        async with self.db.session() as session:
            user = await session.get(AdminUser, signed_in.user_id)
            user.password_hash, user.password_changed_at = new_hash, utcnow()
            session.add(user)
            await session.execute(
                delete(AdminSession).where(
                    AdminSession.user_id == user.id, AdminSession.id != signed_in.session_id
                )
            )
            await session.commit()


# -- the dependency every admin route uses --------------------------------------------


def _auth(request: Request) -> AdminAuth:
    return request.app.state.services.admin


async def current_session(request: Request) -> SignedIn | None:
    """The dashboard session of this request (cached on the request), or None."""
    if "admin_session" in request.scope.get("state", {}):
        return request.state.admin_session
    token = request.cookies.get(SESSION_COOKIE, "")
    signed_in = await _auth(request).session(token) if token else None
    request.state.admin_session = signed_in
    return signed_in


async def check_csrf(request: Request, signed_in: SignedIn) -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get("csrf_token", ""))
    if not sent or not hmac.compare_digest(sent.encode(), signed_in.csrf_token.encode()):
        raise CsrfFailed(
            "The CSRF token is missing or wrong: reload the page and try again.",
        )


async def require_admin(request: Request) -> Principal:
    """A dashboard session (with its CSRF token on writes) or the master key as a bearer.

    A bearer token wins over a cookie: scripts never depend on a browser's state.
    """
    token = bearer_token(request)
    if token:
        principal = await request.app.state.services.keys.verify(token)
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if not principal.is_master:
            raise PermissionDenied(
                "The admin API needs a dashboard session or the master key (INKGATE_MASTER_KEY)."
            )
        return principal
    signed_in = await current_session(request)
    if signed_in is None:
        raise AuthenticationFailed(
            "Sign in to the dashboard (/admin/login), or send 'Authorization: Bearer "
            "$INKGATE_MASTER_KEY'.",
            code="not_signed_in",
        )
    await check_csrf(request, signed_in)
    return Principal(key_id=None, name=f"admin:{signed_in.username}")


Admin = Annotated[Principal, Depends(require_admin)]


def request_ip(request: Request) -> str:
    return client_ip(request.app.state.services.settings, request)
