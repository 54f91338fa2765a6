"""A vidsme-style signed job API: text to image by submit, poll, download.

The scheme is that of the vidsme-2api project, with every constant an option. Each
request (submit and every poll) carries a fresh signature in its query string:

- a 16-character random key (`secrets`, letters and digits);
- `secret_key` = base64(RSA-PKCS#1-v1.5(public key, random key));
- `sign` = base64(AES-128-CBC(key = iv = random key, PKCS7)(
  "app_id:salt:unix_ts:nonce:secret_key")), `nonce` a uuid4;
- query parameters `app_id, t, nonce, sign, secret_key`.

Signing costs ~40 µs per request (RSA with a public key is ~20 µs; measured with
`cryptography` 50 on x86-64), so it runs inline, not in a worker thread.

A job: `POST {base_url}/api/texttoimg/v1/task` `{prompt, model, user_id, height, width}`
answers `data.job_id`; `GET` on the same path with `job_id` and `user_id` is polled every
`poll_interval` until `data.generate_url` appears (joined to `image_base_url` unless
absolute), `data.status` says the job failed, or `deadline` passes. Answers are
`{"code": 200, "msg": ..., "data": {...}}`; another `code` is mapped by `code_error`.

Translation is in the module-level functions (`size_for`, `sign_query`, `code_error`,
`parse_submit`, `parse_poll`, `image_url`); `VidsmeProvider` only sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import re
import secrets
import string
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import httpx
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.errors import (
    ContentPolicyViolation,
    GatewayError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from providers.base import ImageData, ImageProvider, ImageRequest, ProviderOptions
from providers.http import read_limited, upstream_call
from providers.registry import register

log = logging.getLogger("inkgate.providers.vidsme")

TASK_PATH = "/api/texttoimg/v1/task"
KEY_ALPHABET = string.ascii_letters + string.digits
KEY_LENGTH = 16  # AES-128: the key is the 16 ASCII bytes themselves

# What the upstream can draw, by width / height.
SIZES: dict[str, tuple[int, int]] = {
    "1:1": (512, 512),
    "3:2": (768, 512),
    "2:3": (512, 768),
}

AUTH_CODES = frozenset({401, 403})
RATE_LIMIT_CODES = frozenset({429})
FAILED_STATUSES = frozenset({"failed", "fail", "error", "failure"})
_SAFETY_WORDS = ("safety", "content policy", "nsfw", "sensitive", "violat", "违规", "敏感")
_AUTH_WORDS = ("signature", "invalid sign", "sign error", "unauthori", "authenticat")
_RATE_WORDS = ("rate limit", "too many", "too frequent", "频繁")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x]\s*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)


class VidsmeOptions(ProviderOptions):
    """Options of a `vidsme` provider entry in the config file."""

    base_url: str = Field(description="API root; /api/texttoimg/v1/task is appended.")
    image_base_url: str | None = Field(
        default=None, description="Root that relative generate_url values are joined to."
    )
    app_id: str = Field(min_length=1, description="Sent as app_id and signed.")
    salt: SecretStr = Field(description="The static salt inside the signed plaintext.")
    public_key: str = Field(description="RSA public key PEM that encrypts the random key.")
    user_id: str = Field(min_length=1, description="Sent with every job and poll.")
    models: list[str] = Field(default_factory=lambda: ["anime", "realistic"], min_length=1)
    image_model: str | None = Field(default=None, description="Default: the first of models.")
    poll_interval: float = Field(default=3.0, gt=0, description="Seconds between polls.")
    deadline: float = Field(default=240.0, gt=0, description="Seconds a job may take in all.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per call; None keeps the gateway's default."
    )
    max_download_bytes: int = Field(default=30 * 1024 * 1024, gt=0)
    download_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("base_url", "image_base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("public_key")
    @classmethod
    def _check_public_key(cls, value: str) -> str:
        # An environment variable often carries the PEM's newlines as literal "\n".
        value = value.strip().replace("\\n", "\n")
        load_public_key(value)
        return value

    @model_validator(mode="after")
    def _check_model(self) -> VidsmeOptions:
        if self.image_model is not None and self.image_model not in self.models:
            raise ValueError(f"image_model {self.image_model!r} is not one of models")
        return self


def load_public_key(pem: str) -> RSAPublicKey:
    """The RSA public key in `pem`; ValueError when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


# --- translation: pure functions -------------------------------------------------------


def _ratio(text: str) -> float | None:
    match = _RATIO.match(text or "")
    if match is None or float(match[1]) <= 0 or float(match[2]) <= 0:
        return None
    return float(match[1]) / float(match[2])


def size_for(aspect_ratio: str, explicit_size: str | None = None) -> tuple[int, int]:
    """(width, height) for a request: its size's or aspect ratio's nearest `SIZES` entry,
    by log-ratio. A ratio that is not one of them is logged."""
    source = explicit_size or aspect_ratio
    ratio = _ratio(source)
    if ratio is None:
        raise InvalidRequest(
            f"Invalid aspect ratio {source!r}; expected W:H such as 2:3",
            param="size" if explicit_size else "aspect_ratio",
        )
    name = min(SIZES, key=lambda r: abs(math.log(ratio / (SIZES[r][0] / SIZES[r][1]))))
    width, height = SIZES[name]
    if not math.isclose(ratio, width / height):
        log.info("vidsme: %s drawn as the nearest size %dx%d", source, width, height)
    return width, height


def random_key() -> str:
    """The per-request AES key: 16 random letters and digits."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def sign_query(
    app_id: str,
    salt: str,
    public_key: RSAPublicKey,
    *,
    key: str | None = None,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The signature query parameters `app_id, t, nonce, sign, secret_key`."""
    key = key or random_key()
    t = str(int(now if now is not None else time.time()))
    nonce = nonce or str(uuid.uuid4())
    secret_key = base64.b64encode(public_key.encrypt(key.encode(), rsa_padding.PKCS1v15()))
    plaintext = f"{app_id}:{salt}:{t}:{nonce}:{secret_key.decode()}".encode()
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(key.encode())).encryptor()
    sign = base64.b64encode(encryptor.update(padded) + encryptor.finalize())
    return {
        "app_id": app_id,
        "t": t,
        "nonce": nonce,
        "sign": sign.decode(),
        "secret_key": secret_key.decode(),
    }


def _looks_like(text: str, words: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(word in low for word in words)


def code_error(provider: str, code: Any, message: str) -> GatewayError:
    """The gateway error for an answer whose `code` is not 200.

    Auth codes (or a signature complaint) → 502 `upstream_auth_failed`, never retried;
    rate-limit codes → 429, retried; a refusal → `ContentPolicyViolation`; else
    `UpstreamError` with the upstream's message, retried only for codes 500-599.
    """
    message = message[:300] or "no message"
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = 0
    if number in AUTH_CODES or _looks_like(message, _AUTH_WORDS):
        return UpstreamError(
            f"Upstream provider '{provider}' rejected the gateway's credentials "
            f"(code {code}: {message}); your API key is fine, the gateway's upstream "
            "configuration is not",
            code="upstream_auth_failed",
            retryable=False,
        )
    if number in RATE_LIMIT_CODES or _looks_like(message, _RATE_WORDS):
        return RateLimited(
            f"Upstream provider '{provider}' is rate limiting: {message}", retry_after=5
        )
    if _looks_like(message, _SAFETY_WORDS):
        return ContentPolicyViolation(
            f"Upstream provider '{provider}' refused the prompt: {message}"
        )
    return UpstreamError(
        f"Upstream provider '{provider}' returned code {code}: {message}",
        retryable=500 <= number < 600,
    )


def _answer_data(provider: str, body: Any) -> dict:
    """`data` of a successful answer; raises `code_error` for any other code."""
    if not isinstance(body, dict):
        raise UpstreamError(f"Upstream provider '{provider}' answered with an unexpected body")
    code = body.get("code")
    if str(code) != "200":
        raise code_error(provider, code, str(body.get("msg") or body.get("message") or ""))
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def parse_submit(provider: str, body: Any) -> str:
    """The job id of a submit answer."""
    job_id = _answer_data(provider, body).get("job_id")
    if not job_id:
        raise UpstreamError(f"Upstream provider '{provider}' accepted the job without a job_id")
    return str(job_id)


def parse_poll(provider: str, body: Any) -> str | None:
    """The `generate_url` of a finished job, None while it runs; raises when it failed."""
    data = _answer_data(provider, body)
    url = data.get("generate_url")
    if url:
        return str(url)
    status = str(data.get("status") or "").lower()
    if status in FAILED_STATUSES:
        reason = str(data.get("msg") or data.get("reason") or data.get("error") or status)[:300]
        if _looks_like(reason, _SAFETY_WORDS):
            raise ContentPolicyViolation(
                f"Upstream provider '{provider}' refused the prompt: {reason}"
            )
        raise UpstreamError(
            f"Upstream provider '{provider}': the job failed: {reason}",
            code="upstream_job_failed",
            retryable=False,
        )
    return None


def image_url(image_base_url: str, generate_url: str) -> str:
    """`generate_url` as an absolute URL: relative ones are joined to `image_base_url`."""
    if generate_url.startswith(("http://", "https://")):
        return generate_url
    if generate_url.startswith("//"):
        return f"{httpx.URL(image_base_url).scheme}:{generate_url}"
    return f"{image_base_url}/{generate_url.lstrip('/')}"


def _redact(text: str, secrets_sent: tuple[str, ...]) -> str:
    for value in secrets_sent:
        if value:
            text = text.replace(value, "[redacted]")
    return text


def _redact_body(body: Any, secrets_sent: tuple[str, ...]) -> Any:
    """`body` with the secrets cut out of its messages (before they are ever shortened)."""
    if isinstance(body, dict):
        for field in ("msg", "message"):
            if isinstance(body.get(field), str):
                body[field] = _redact(body[field], secrets_sent)
        data = body.get("data")
        if isinstance(data, dict):
            _redact_body(data, secrets_sent)
    return body


def _json(provider: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UpstreamError(f"Upstream provider '{provider}' answered with invalid JSON") from None


# --- the provider ----------------------------------------------------------------------


@register("vidsme")
class VidsmeProvider(ImageProvider):
    """Text to image on a vidsme-style signed job API (one job per image)."""

    Options: ClassVar[type[ProviderOptions]] = VidsmeOptions
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("salt",)
    options: VidsmeOptions

    def __init__(self, name: str, options: ProviderOptions, http: httpx.AsyncClient) -> None:
        super().__init__(name, options, http)
        assert isinstance(options, VidsmeOptions)
        self._public_key = load_public_key(options.public_key)
        self._salt = options.salt.get_secret_value()
        self._timeout: Any = (
            options.timeout if options.timeout is not None else httpx.USE_CLIENT_DEFAULT
        )
        self._task_url = f"{options.base_url}{TASK_PATH}"
        self._image_base = options.image_base_url or options.base_url

    def configured_models(self) -> dict[str, str]:
        return {"image": self._default_model}

    @property
    def _default_model(self) -> str:
        return self.options.image_model or self.options.models[0]

    @contextlib.contextmanager
    def _upstream(self, secrets_sent: tuple[str, ...] = ()) -> Iterator[None]:
        """`upstream_call` (salt redacted), and no part of the signature in a message."""
        try:
            with upstream_call(self.name, self._salt):
                yield
        except GatewayError as exc:
            redacted = _redact(exc.message, secrets_sent)
            if redacted != exc.message:
                exc.message = redacted
                exc.args = (redacted,)
            raise

    async def _call(self, method: str, params: dict[str, str], **kwargs: Any) -> Any:
        """One signed call to the task endpoint; the answer's JSON body, with any echo of
        the salt, the random key or the signature cut out of its message."""
        key = random_key()
        query = sign_query(self.options.app_id, self._salt, self._public_key, key=key)
        secrets_sent = (self._salt, key, query["sign"], query["secret_key"])
        with self._upstream(secrets_sent):
            response = await self.http.request(
                method,
                self._task_url,
                params={**params, **query},
                timeout=self._timeout,
                **kwargs,
            )
            if not response.is_success:
                # Some deployments put the code in an HTTP error too: prefer the body's code.
                with contextlib.suppress(ValueError):
                    body = response.json()
                    if isinstance(body, dict) and "code" in body:
                        return _redact_body(body, secrets_sent)
                response.raise_for_status()
            return _redact_body(_json(self.name, response), secrets_sent)

    async def generate(self, request: ImageRequest) -> list[ImageData]:
        if request.mask is not None:
            raise InvalidRequest(
                f"Provider '{self.name}' draws from text only and takes no mask", param="mask"
            )
        model = request.model or self._default_model
        if model not in self.options.models:
            raise InvalidRequest(
                f"Provider '{self.name}' offers the models {', '.join(self.options.models)}, "
                f"not {model!r}",
                param="model",
            )
        if request.references:
            log.debug("provider %s: reference images ignored (text to image only)", self.name)
        width, height = size_for(request.aspect_ratio, request.size)
        payload = {
            "prompt": request.prompt,
            "model": model,
            "user_id": self.options.user_id,
            "height": height,
            "width": width,
        }
        n = max(1, request.n)
        if n == 1:
            return [await self._one(payload)]
        tasks = [asyncio.ensure_future(self._one(payload)) for _ in range(n)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _one(self, payload: dict) -> ImageData:
        started = time.monotonic()
        job_id = parse_submit(self.name, await self._call("POST", {}, json=payload))
        log.debug("provider %s: job %s submitted", self.name, job_id)
        url = await self._wait(job_id, started)
        return await self._download(image_url(self._image_base, url))

    async def _wait(self, job_id: str, started: float) -> str:
        """Poll until the job has a `generate_url`. Transient poll errors are tolerated
        until the deadline (the job keeps running upstream); anything else ends it."""
        params = {"job_id": job_id, "user_id": self.options.user_id}
        deadline = started + self.options.deadline
        last_problem = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Not retried: the job may still be running (and billed) upstream.
                raise UpstreamTimeout(
                    f"Upstream provider '{self.name}': job {job_id} did not finish within "
                    f"{self.options.deadline:g} s{last_problem}",
                    code="upstream_job_timeout",
                    retryable=False,
                )
            await anyio.sleep(min(self.options.poll_interval, remaining))
            try:
                url = parse_poll(self.name, await self._call("GET", params))
            except GatewayError as exc:
                if not exc.retryable:
                    raise
                log.warning("provider %s: poll of job %s failed: %s", self.name, job_id, exc)
                last_problem = f" (last poll: {exc.message})"
                continue
            if url:
                return url

    async def _download(self, url: str) -> ImageData:
        """The generated image, retried on transient trouble (`download_attempts` in all)."""
        attempts = self.options.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self._upstream():
                    return await self._fetch(url)
            except GatewayError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                log.warning(
                    "provider %s: image download failed (%s), attempt %d of %d",
                    self.name, exc.message, attempt, attempts,
                )  # fmt: skip
                await anyio.sleep(min(self.options.poll_interval, 0.5 * attempt))
        raise AssertionError("unreachable")

    async def _fetch(self, url: str) -> ImageData:
        async with self.http.stream("GET", url, timeout=self._timeout) as response:
            if not response.is_success:
                await response.aread()  # the error mapping reads the body
                response.raise_for_status()
            content_type = response.headers.get("content-type", "")
            if not content_type.lower().startswith("image/"):
                raise UpstreamError(
                    f"Upstream provider '{self.name}': the generated image URL served "
                    f"{content_type.split(';')[0] or 'no content type'}, not an image",
                    retryable=False,
                )
            limit = self.options.max_download_bytes
            data = await read_limited(
                response,
                limit,
                f"Upstream provider '{self.name}': the generated image is larger than the "
                f"limit ({limit} bytes, from max_download_bytes)",
            )
        try:
            return ImageData.from_bytes(data)
        except ValueError:
            raise UpstreamError(
                f"Upstream provider '{self.name}' returned data that is not a PNG, JPEG, "
                "WebP or GIF image",
                retryable=False,
            ) from None
