"""A fake vidsme-style signed job API, for tests (in-process, via `httpx.ASGITransport`)
or as a real process:

    python -m tests.fakes.vidsme_upstream --port 18998 --polls 2

It holds the RSA *private* key and verifies every signature the way the real service
must: `secret_key` is decrypted (PKCS#1 v1.5) to the random key, `sign` is decrypted
with it (AES-128-CBC, iv = key, PKCS7), and the plaintext must be exactly
`app_id:salt:t:nonce:secret_key` for the query's `app_id, t, nonce, secret_key` and the
configured app id and salt, with `t` within `TIME_WINDOW` seconds of now and the nonce
never seen before. Anything else answers `{"code": 401, "msg": "invalid signature: ..."}`
(HTTP 200, like the real API), so a provider that passes these tests signs correctly.

Answers are `{"code": 200, "msg": "success", "data": {...}}`:

- `POST /api/texttoimg/v1/task` `{prompt, model, user_id, height, width}` → `data.job_id`.
- `GET /api/texttoimg/v1/task?job_id&user_id` → `data.status` `processing` until the job
  has been polled `polls` times, then `success` with `data.generate_url`
  (`/images/{job_id}.png`, relative; absolute with `absolute_urls`). A failed job answers
  `status: failed` with `msg`.
- `GET /images/{job_id}.png` serves the PNG (`image_content_type`).

Everything a test may look at or change lives in `app.state`:

- `requests`: every request: `method`, `path`, `query` (dict), `json`, `verified` (the
  signature checked out; None for image downloads), `problem` (why not).
- `jobs`: job id → `{"prompt", "model", "width", "height", "polls", "outcome"}`.
- `polls` (polls before a job is done), `outcome` for new jobs: `success`, `failed`
  (status failed, `FAILED_MESSAGE`), `refused` (status failed, `REFUSAL_MESSAGE`, a
  content-policy reason), `never` (processing forever).
- `fail_next_submit` / `fail_next_poll`: lists of `(code, msg)` answered instead, one per
  request (e.g. `(401, "app not authorized")`, `(429, "too many requests")`).
- `content_policy`: submits answer `(400, SUBMIT_REFUSAL)`.
- `fail_next_download`: HTTP statuses answered to image downloads, one per request.
- `image_content_type`, `absolute_urls`, `app_id`, `salt`, `user_id`, `png`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.openai_upstream import fake_png

APP_ID = "fake-app-7"
SALT = "fake-static-salt-0123"
USER_ID = "fake-user-42"
TIME_WINDOW = 300
SIGNED_FIELDS = ("app_id", "t", "nonce", "sign", "secret_key")
FAILED_MESSAGE = "generation failed: worker crashed"
REFUSAL_MESSAGE = "image blocked: nsfw content detected"
SUBMIT_REFUSAL = "prompt contains sensitive words"


@functools.lru_cache(maxsize=1)
def private_key() -> rsa.RSAPrivateKey:
    """The fake's key pair, made once per process (2048 bits, like the real service)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: rsa.RSAPrivateKey | None = None) -> str:
    """The PEM a provider is configured with."""
    key = key or private_key()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _answer(code: int, msg: str, data: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg, "data": data or {}})


def verify_signature(state: Any, query: dict[str, str]) -> str | None:
    """Why the query's signature is wrong, or None when it is right."""
    missing = [name for name in SIGNED_FIELDS if not query.get(name)]
    if missing:
        return f"missing {', '.join(missing)}"
    if query["app_id"] != state.app_id:
        return "unknown app_id"
    try:
        key = state.private_key.decrypt(
            base64.b64decode(query["secret_key"], validate=True), rsa_padding.PKCS1v15()
        )
    except (ValueError, binascii.Error):
        return "secret_key does not decrypt"
    if len(key) != 16:
        return "the random key is not 16 bytes"
    try:
        decryptor = Cipher(algorithms.AES(key), modes.CBC(key)).decryptor()
        padded = decryptor.update(base64.b64decode(query["sign"], validate=True))
        padded += decryptor.finalize()
        unpadder = sym_padding.PKCS7(128).unpadder()
        plaintext = (unpadder.update(padded) + unpadder.finalize()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return "sign does not decrypt"
    expected = ":".join(
        [query["app_id"], state.salt, query["t"], query["nonce"], query["secret_key"]]
    )
    if plaintext != expected:
        return "sign does not match the query"
    try:
        skew = abs(int(query["t"]) - time.time())
    except ValueError:
        return "t is not a unix time"
    if skew > TIME_WINDOW:
        return "t is outside the time window"
    if query["nonce"] in state.nonces:
        return "nonce used before"
    state.nonces.add(query["nonce"])
    return None


def _record(request: Request, body: Any, problem: str | None, verified: bool | None) -> None:
    request.app.state.requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "json": body,
            "verified": verified,
            "problem": problem,
        }
    )


async def task(request: Request) -> Response:
    state = request.app.state
    query = dict(request.query_params)
    body: Any = None
    if request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            body = None
    problem = verify_signature(state, query)
    _record(request, body, problem, problem is None)
    if problem is not None:
        return _answer(401, f"invalid signature: {problem}")
    if request.method == "POST":
        return _submit(state, body)
    return _poll(state, query)


def _submit(state: Any, body: Any) -> Response:
    if state.fail_next_submit:
        return _answer(*state.fail_next_submit.pop(0))
    if not isinstance(body, dict) or not body.get("prompt"):
        return _answer(400, "prompt is required")
    if body.get("user_id") != state.user_id:
        return _answer(403, "unknown user")
    if body.get("model") not in state.models:
        return _answer(400, "unknown model")
    if (body.get("width"), body.get("height")) not in state.sizes:
        return _answer(400, "unsupported size")
    if state.content_policy:
        return _answer(400, SUBMIT_REFUSAL)
    job_id = uuid.uuid4().hex
    state.jobs[job_id] = {
        "prompt": body["prompt"],
        "model": body["model"],
        "width": body["width"],
        "height": body["height"],
        "polls": 0,
        "outcome": state.outcome,
    }
    return _answer(200, "success", {"job_id": job_id})


def _poll(state: Any, query: dict[str, str]) -> Response:
    if state.fail_next_poll:
        return _answer(*state.fail_next_poll.pop(0))
    job = state.jobs.get(query.get("job_id", ""))
    if job is None or query.get("user_id") != state.user_id:
        return _answer(404, "job not found")
    job["polls"] += 1
    job_id = query["job_id"]
    if job["outcome"] == "never" or job["polls"] < state.polls:
        return _answer(200, "success", {"job_id": job_id, "status": "processing"})
    if job["outcome"] == "failed":
        return _answer(
            200, "success", {"job_id": job_id, "status": "failed", "msg": FAILED_MESSAGE}
        )
    if job["outcome"] == "refused":
        data = {"job_id": job_id, "status": "failed", "msg": REFUSAL_MESSAGE}
        return _answer(200, "success", data)
    url = f"/images/{job_id}.png"
    if state.absolute_urls:
        url = f"{state.absolute_base}{url}"
    return _answer(200, "success", {"job_id": job_id, "status": "success", "generate_url": url})


async def image(request: Request) -> Response:
    state = request.app.state
    _record(request, None, None, None)
    if state.fail_next_download:
        return Response(b"busy", status_code=state.fail_next_download.pop(0))
    job_id = request.path_params["job_id"]
    if job_id not in state.jobs:
        return Response(b"not found", status_code=404)
    return Response(state.png, media_type=state.image_content_type)


def create_fake_vidsme(
    *,
    app_id: str = APP_ID,
    salt: str = SALT,
    user_id: str = USER_ID,
    polls: int = 2,
    key: rsa.RSAPrivateKey | None = None,
) -> Starlette:
    """A fresh fake. Configure the provider with `public_key_pem()` (or of `key`)."""
    app = Starlette(
        routes=[
            Route("/api/texttoimg/v1/task", task, methods=["GET", "POST"]),
            Route("/images/{job_id}.png", image, methods=["GET"]),
        ]
    )
    state = app.state
    state.private_key = key or private_key()
    state.app_id, state.salt, state.user_id = app_id, salt, user_id
    state.models = ("anime", "realistic")
    state.sizes = {(512, 512), (768, 512), (512, 768)}
    state.polls = polls
    state.outcome = "success"
    state.requests = []
    state.jobs = {}
    state.nonces = set()
    state.fail_next_submit = []
    state.fail_next_poll = []
    state.fail_next_download = []
    state.content_policy = False
    state.png = fake_png(512, 768, 0).png(7)
    state.image_content_type = "image/png"
    state.absolute_urls = False
    state.absolute_base = "http://cdn.fake"
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake vidsme signed job API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18998)
    parser.add_argument("--polls", type=int, default=2, help="polls before a job is done")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    app = create_fake_vidsme(polls=args.polls)
    print(
        f"fake vidsme on http://{args.host}:{args.port} (app_id {APP_ID}, salt {SALT}, "
        f"user_id {USER_ID}); public key:\n{public_key_pem()}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
