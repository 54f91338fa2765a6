"""Provider secrets saved from the dashboard: which options are secret, how they are
encrypted at rest and how they are shown.

Secret options of a provider type: the class's `SECRET_FIELDS` (default `("api_key",)`),
every option typed `SecretStr`, and every option whose name has a word like key, secret,
token or password (`public_key`, `key_prefix` excepted). Inside a `*headers` option,
headers named like `Authorization`, `Cookie` or `X-Api-Key` are secret too.

A secret is stored as a Fernet token keyed from `INKGATE_SECRET_KEY` (or the
`secret.key` made in the data directory), except a `${ENV_NAME}` reference, which is not
a secret itself and is kept as written. It is shown masked (`sk-a…9f3c`); never in clear.
"""

from __future__ import annotations

import base64
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from providers.base import Provider

SECRET_WORDS = ("key", "secret", "token", "password", "passwd")
NOT_SECRET = frozenset({"public_key", "public_key_pem", "key_prefix"})
SECRET_HEADER_WORDS = ("authorization", "cookie", "key", "token", "secret", "password")
MASK = "••••"
SHOWN_FROM = 20  # shorter secrets are masked whole: showing 8 characters would say too much
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$")
_KDF_LABEL = b"inkgate provider secrets v1"

Path = tuple[str, ...]  # ("api_key",) or ("extra_headers", "Authorization")


def _has_secret_word(name: str) -> bool:
    parts = re.split(r"[^a-z0-9]+", name.lower())
    return any(p.endswith(word) for p in parts for word in SECRET_WORDS)


def _is_secret_type(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_is_secret_type(arg) for arg in typing.get_args(annotation))
    return False


def secret_fields(cls: type[Provider]) -> tuple[str, ...]:
    """The option names of provider class `cls` whose values are secret."""
    declared = set(getattr(cls, "SECRET_FIELDS", ("api_key",)))
    out = []
    for name, info in cls.Options.model_fields.items():
        if name in declared or _is_secret_type(info.annotation):
            out.append(name)
        elif name not in NOT_SECRET and _has_secret_word(name):
            out.append(name)
    return tuple(out)


def is_header_field(name: str) -> bool:
    return name.endswith("headers")


def is_secret_header(header: str) -> bool:
    lowered = header.lower()
    return any(word in lowered for word in SECRET_HEADER_WORDS)


def secret_paths(cls: type[Provider], options: dict[str, Any]) -> list[Path]:
    """Where the secrets are in `options` (a provider's raw options)."""
    paths: list[Path] = [(name,) for name in secret_fields(cls) if name in options]
    for name, value in options.items():
        if is_header_field(name) and isinstance(value, dict):
            paths += [(name, str(h)) for h in value if is_secret_header(str(h))]
    return paths


def get_path(options: dict[str, Any], path: Path) -> Any:
    value: Any = options
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def set_path(options: dict[str, Any], path: Path, value: Any) -> None:
    target = options
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def is_env_ref(value: Any) -> bool:
    """`${NAME}` or `${NAME:-default}`: a reference to the environment, not a secret."""
    return isinstance(value, str) and bool(ENV_REF.match(value.strip()))


def mask(value: Any) -> Any:
    """`sk-a…9f3c` (first 4, last 4); `••••` when short; an env reference as written."""
    if value is None or value == "":
        return value
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    if is_env_ref(text):
        return text
    if len(text) < SHOWN_FROM:
        return MASK
    return f"{text[:4]}…{text[-4:]}"


def masked(options: dict[str, Any], paths: Iterable[Path]) -> dict[str, Any]:
    """A copy of `options` with the values at `paths` masked."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
    for path in paths:
        if get_path(out, path) is not None:
            set_path(out, path, mask(get_path(out, path)))
    return out


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (long enough to mean something) replaced by its mask."""
    for secret in sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len)[::-1]:
        if not is_env_ref(secret):
            text = text.replace(secret, mask(secret))
    return text


def keeps_stored(sent: Any, stored: Any) -> bool:
    """A secret sent blank, as `••••` or as the stored one's mask means: keep the stored one."""
    if not isinstance(sent, str):
        return False
    return sent.strip() == "" or sent == MASK or (stored is not None and sent == mask(stored))


def merge_options(
    cls: type[Provider], stored: dict[str, Any], sent: dict[str, Any]
) -> dict[str, Any]:
    """`stored` with the options `sent` applied: only those change, `null` removes one.

    A secret sent blank or masked keeps the stored secret (the form never has it). A
    `*headers` option is replaced whole, except that a secret header sent blank or masked
    keeps its stored value.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    top = set(secret_fields(cls))
    for key, value in sent.items():
        if key in top and keeps_stored(value, stored.get(key)):
            continue
        if value is None:
            out.pop(key, None)
            continue
        if is_header_field(key) and isinstance(value, dict):
            old = stored.get(key) if isinstance(stored.get(key), dict) else {}
            headers = {}
            for header, item in value.items():
                if is_secret_header(str(header)) and keeps_stored(item, old.get(header)):
                    if header in old:
                        headers[header] = old[header]
                    continue
                headers[header] = item
            value = headers
        out[key] = value
    return out


class SecretUnreadable(ValueError):
    """A stored secret cannot be decrypted (INKGATE_SECRET_KEY changed?)."""


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) with a key derived by HKDF-SHA256 from the
    gateway's secret, so losing `INKGATE_SECRET_KEY` means entering the secrets again."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_LABEL).derive(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt(self, value: str) -> dict[str, str]:
        return {"fernet": self._fernet.encrypt(value.encode()).decode()}

    def decrypt(self, stored: dict[str, str]) -> str:
        try:
            return self._fernet.decrypt(stored["fernet"].encode()).decode()
        except (InvalidToken, KeyError, TypeError, ValueError):
            raise SecretUnreadable(
                "cannot be decrypted with this INKGATE_SECRET_KEY; enter it again"
            ) from None

    def seal(self, options: dict[str, Any], paths: Iterable[Path]) -> dict[str, Any]:
        """A copy of `options` with the secrets at `paths` encrypted (env references kept)."""
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
        for path in paths:
            value = get_path(out, path)
            if isinstance(value, str) and value and not is_env_ref(value):
                set_path(out, path, self.encrypt(value))
        return out

    def open(self, stored: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """(options with secrets decrypted, {dotted path: problem} of unreadable ones).

        An unreadable secret is left out, so the rest of the provider still loads.
        """
        out: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, value in stored.items():
            if _is_sealed(value):
                try:
                    out[name] = self.decrypt(value)
                except SecretUnreadable as exc:
                    problems[name] = str(exc)
            elif isinstance(value, dict):
                inner: dict[str, Any] = {}
                for key, item in value.items():
                    if _is_sealed(item):
                        try:
                            inner[key] = self.decrypt(item)
                        except SecretUnreadable as exc:
                            problems[f"{name}.{key}"] = str(exc)
                    else:
                        inner[key] = item
                out[name] = inner
            else:
                out[name] = value
        return out, problems


def _is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"fernet"} and isinstance(value["fernet"], str)
