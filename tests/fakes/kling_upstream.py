"""A strict fake of Kling's API (images and videos), for tests (in-process, via
`httpx.ASGITransport`) or as a real process:

    python -m tests.fakes.kling_upstream --port 18997 --polls 2

Every API call must carry `Authorization: Bearer <JWT>`: an HS256 JWT (no base64
padding) signed with `SECRET_KEY`, `iss` = `ACCESS_KEY`, `nbf` <= now < `exp` by the
fake's `clock`. Anything else answers HTTP 401 with Kling's body
`{"code": 100x, "message", "request_id"}`: 1001 no Authorization, 1002 malformed or
wrongly signed, 1000 unknown access key, 1003 not yet valid, 1004 expired.

Bodies are checked field by field as Kling documents them (unknown fields too); a
wrong one answers HTTP 400 `{"code": 1201, "message": "<field>: <why>"}`:

- `POST /v1/images/generations` `{model_name, prompt, n 1-9, aspect_ratio, image?
  (raw base64 JPG/PNG, >= 300 px, 1:2.5-2.5:1, <= 10 MB), image_reference (required with
  kling-v1-5 and an image), image_fidelity?, negative_prompt? (not with an image)}`.
- `POST /v1/videos/image2video` `{model_name, image, image_tail? (only with duration
  "5"), prompt?, negative_prompt?, cfg_scale? (0-1; not for kling-v2 models), mode std|pro,
  duration "5"|"10" (a string, as Kling wants)}`; `POST /v1/videos/text2video` the same
  without images, `prompt` required, `aspect_ratio` 16:9 | 9:16 | 1:1.

Each answers `data.task_id` (`task_status: submitted`). `GET .../{task_id}` (or the `external_task_id` given at submission) on the
submit path answers `submitted` on the first poll, `processing` until the task has been
polled `polls` times, then the outcome: `succeed` with `task_result.images[]`
(`{index, url}`) or `task_result.videos[]` (`{id, url, duration}`), URLs on the fake's
own host (`/results/{task_id}/{index}.png`, `/results/{task_id}/video.mp4`), or
`failed` with `task_status_msg`. `GET /v1/images/generations` lists tasks (a cheap
signed call).

Everything a test may look at or change lives in `app.state`:

- `requests`: every request: `method`, `path`, `query`, `json`, `authorization`, `claims`
  (the verified JWT claims, None when the token was refused), `code` answered.
- `tasks`: task id → `{"kind", "body", "polls", "outcome"}`.
- `polls`; `outcome` for new tasks: `succeed`, `failed` (`FAILED_MESSAGE`), `refused`
  (`REFUSAL_MESSAGE`, Kling's risk-control reason), `never` (processing forever).
- `fail_next_submit` / `fail_next_poll`: Kling codes (e.g. 1102, 1301, 1302, 1303, 5000)
  or `(code, message)` pairs answered instead, one per request, with the HTTP status of
  `ERRORS`; `retry_after` adds that header to 429 answers.
- `auth_error`: a code 1000-1004 answered to every API call (a revoked key).
- `fail_next_download`: HTTP statuses answered to result downloads, one per request.
- `image_content_type`, `video_content_type`, `png(index)`, `mp4`, `clock`,
  `access_key`, `secret_key`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import json
import secrets
import struct
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.openai_upstream import fake_png

ACCESS_KEY = "fake-kling-access-key-0123"
SECRET_KEY = "fake-kling-secret-key-4567-do-not-leak"
FAILED_MESSAGE = "Task failed: the generation service hit an internal error"
REFUSAL_MESSAGE = "Failure to pass the risk control system"

IMAGE_MODELS = ("kling-v1", "kling-v1-5", "kling-v2", "kling-v2-new", "kling-v2-1")
VIDEO_MODELS = {
    "image2video": (
        "kling-v1",
        "kling-v1-5",
        "kling-v1-6",
        "kling-v2-master",
        "kling-v2-1",
        "kling-v2-1-master",
        "kling-v2-5-turbo",
    ),
    "text2video": (
        "kling-v1",
        "kling-v1-6",
        "kling-v2-master",
        "kling-v2-1-master",
        "kling-v2-5-turbo",
    ),
}
IMAGE_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
VIDEO_RATIOS = ("16:9", "9:16", "1:1")
IMAGE_FIELDS = frozenset(
    {
        "model_name",
        "prompt",
        "negative_prompt",
        "image",
        "image_reference",
        "image_fidelity",
        "human_fidelity",
        "resolution",
        "n",
        "aspect_ratio",
        "callback_url",
        "external_task_id",
    }
)
VIDEO_FIELDS = frozenset(
    {
        "model_name",
        "prompt",
        "negative_prompt",
        "cfg_scale",
        "mode",
        "duration",
        "camera_control",
        "callback_url",
        "external_task_id",
    }
)
IMAGE2VIDEO_FIELDS = VIDEO_FIELDS | {"image", "image_tail", "static_mask", "dynamic_masks"}
TEXT2VIDEO_FIELDS = VIDEO_FIELDS | {"aspect_ratio"}

# Kling's documented codes: HTTP status and message.
ERRORS: dict[int, tuple[int, str]] = {
    1000: (401, "Authentication failed"),
    1001: (401, "Authorization is empty"),
    1002: (401, "Authorization is invalid"),
    1003: (401, "Authorization is not yet valid"),
    1004: (401, "Authorization has expired"),
    1100: (429, "Account exception"),
    1101: (429, "Account in arrears (postpaid scenario)"),
    1102: (429, "Resource pack depleted or expired (prepaid scenario)"),
    1103: (403, "Unauthorized access to requested resource"),
    1200: (400, "Invalid request parameters"),
    1201: (400, "Invalid parameters"),
    1202: (404, "The requested method is invalid"),
    1203: (404, "The requested resource does not exist"),
    1300: (400, "Trigger strategy of the platform"),
    1301: (400, "Trigger the content security policy of the platform"),
    1302: (429, "The API request is too fast, exceeding the platform's rate limit"),
    1303: (429, "parallel task over resource pack limit"),
    1304: (429, "Trigger the platform's IP whitelisting policy"),
    5000: (500, "Server internal error"),
    5001: (503, "Server temporarily unavailable, usually due to maintenance"),
    5002: (504, "Server internal timeout, usually due to a backlog"),
}


class Refused(Exception):
    """A request the fake answers with a Kling error code."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or ERRORS[code][1])
        self.code = code
        self.message = message or ERRORS[code][1]


def fake_mp4(serial: int = 0) -> bytes:
    """A tiny MP4-looking file: a valid `ftyp` box, then an `mdat` box."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + b"isom" + struct.pack(">I", 0x200) + b"isomavc1"
    payload = b"fake-kling-video-%06d" % serial
    return ftyp + struct.pack(">I", 8 + len(payload)) + b"mdat" + payload


def _b64url_decode(part: str) -> bytes:
    if "=" in part:
        raise ValueError("padded base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(state: Any, authorization: str | None) -> tuple[dict | None, Refused | None]:
    """(claims, None) for a good token, else (None, the refusal with its 100x code)."""
    if not authorization:
        return None, Refused(1001)
    scheme, _, token = authorization.partition(" ")
    parts = token.split(".")
    if scheme != "Bearer" or len(parts) != 3:
        return None, Refused(1002, "Authorization is invalid: expected 'Bearer <jwt>'")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        return None, Refused(1002, "Authorization is invalid: not a JWT")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None, Refused(1002, "Authorization is invalid: alg must be HS256")
    expected = hmac.new(
        state.secret_key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(signature, expected):
        return None, Refused(1002, "Authorization is invalid: signature does not verify")
    if not isinstance(claims, dict) or claims.get("iss") != state.access_key:
        return None, Refused(1000, "Authentication failed: unknown access key")
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int) or not isinstance(nbf, int) or exp <= nbf:
        return None, Refused(1002, "Authorization is invalid: exp and nbf must be integers")
    now = state.clock()
    if now < nbf:
        return None, Refused(1003)
    if now >= exp:
        return None, Refused(1004)
    return claims, None


def _body(code: int, message: str, data: Any = None) -> dict:
    return {"code": code, "message": message, "request_id": str(uuid.uuid4()), "data": data}


def _refusal(state: Any, refused: Refused) -> JSONResponse:
    status = ERRORS.get(refused.code, (400, ""))[0]
    headers = {}
    if status == 429 and state.retry_after is not None:
        headers["Retry-After"] = str(state.retry_after)
    return JSONResponse(_body(refused.code, refused.message), status_code=status, headers=headers)


def _pop_failure(queue: list) -> Refused | None:
    if not queue:
        return None
    item = queue.pop(0)
    return Refused(*item) if isinstance(item, tuple) else Refused(item)


# --- field checks ----------------------------------------------------------------------


def _bad(field: str, why: str) -> Refused:
    return Refused(1201, f"{field}: {why}")


def _check_fields(body: Any, allowed: frozenset[str]) -> dict:
    if not isinstance(body, dict):
        raise Refused(1200, "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(unknown[0], "unknown field")
    return body


def _check_text(body: dict, field: str, *, required: bool = False) -> None:
    value = body.get(field)
    if value is None:
        if required:
            raise _bad(field, "is required")
        return
    if not isinstance(value, str) or (required and not value.strip()):
        raise _bad(field, "must be a non-empty string")
    if len(value) > 2500:
        raise _bad(field, "cannot exceed 2500 characters")


def _check_unit(body: dict, field: str) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise _bad(field, "must be a number in [0, 1]")


def _check_image(body: dict, field: str) -> None:
    """Kling's image rules: raw base64 (no data: prefix) of a JPG/PNG, <= 10 MB,
    >= 300 px on each side, aspect ratio 1:2.5 to 2.5:1."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise _bad(field, "must be a base64 string")
    if value.startswith("data:"):
        raise _bad(field, "base64 must not carry a data: prefix")
    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise _bad(field, "is not valid base64") from None
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        raise _bad(field, "must be a .jpg/.jpeg/.png image")
    if len(data) > 10 * 1024 * 1024:
        raise _bad(field, "cannot exceed 10MB")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except OSError:
        raise _bad(field, "cannot be decoded") from None
    if min(width, height) < 300:
        raise _bad(field, "width and height must be at least 300px")
    if not 1 / 2.5 <= width / height <= 2.5:
        raise _bad(field, "aspect ratio must be between 1:2.5 and 2.5:1")


def check_image_body(body: Any) -> dict:
    body = _check_fields(body, IMAGE_FIELDS)
    model = body.get("model_name", "kling-v1")
    if model not in IMAGE_MODELS:
        raise _bad("model_name", f"invalid value {model!r}")
    _check_text(body, "prompt", required=True)
    _check_text(body, "negative_prompt")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
        raise _bad("n", "must be an integer in [1, 9]")
    ratio = body.get("aspect_ratio", "16:9")
    if ratio not in IMAGE_RATIOS or (ratio == "21:9" and model == "kling-v1"):
        raise _bad("aspect_ratio", f"{ratio!r} is not supported by {model}")
    if "image" in body:
        _check_image(body, "image")
        if body.get("negative_prompt"):
            raise _bad("negative_prompt", "is not supported with a reference image")
        if model == "kling-v1-5" and body.get("image_reference") not in ("subject", "face"):
            raise _bad("image_reference", "is required for kling-v1-5 with an image")
    elif "image_reference" in body or "image_fidelity" in body:
        raise _bad("image", "is required with image_reference / image_fidelity")
    _check_unit(body, "image_fidelity")
    _check_unit(body, "human_fidelity")
    return body


def check_video_body(kind: str, body: Any) -> dict:
    body = _check_fields(body, IMAGE2VIDEO_FIELDS if kind == "image2video" else TEXT2VIDEO_FIELDS)
    model = body.get("model_name", "kling-v1")
    if model not in VIDEO_MODELS[kind]:
        raise _bad("model_name", f"invalid value {model!r}")
    _check_text(body, "prompt", required=kind == "text2video")
    _check_text(body, "negative_prompt")
    duration = body.get("duration", "5")
    if duration not in ("5", "10"):  # a string: 5 (the number) is refused
        raise _bad("duration", 'must be the string "5" or "10"')
    if body.get("mode", "std") not in ("std", "pro"):
        raise _bad("mode", "must be std or pro")
    _check_unit(body, "cfg_scale")
    if "cfg_scale" in body and model.startswith("kling-v2"):
        raise _bad("cfg_scale", f"is not supported by {model}")
    if kind == "image2video":
        if "image" not in body:
            raise _bad("image", "is required")
        _check_image(body, "image")
        if "image_tail" in body:
            _check_image(body, "image_tail")
            if duration != "5":
                raise _bad("image_tail", 'is only supported with duration "5"')
    elif body.get("aspect_ratio", "16:9") not in VIDEO_RATIOS:
        raise _bad("aspect_ratio", "must be 16:9, 9:16 or 1:1")
    return body


# --- handlers --------------------------------------------------------------------------


async def _read_json(request: Request) -> Any:
    if request.method != "POST":
        return None
    try:
        return await request.json()
    except ValueError:
        return None


def _record(request: Request, body: Any, claims: dict | None) -> dict:
    entry = {
        "method": request.method,
        "path": request.url.path,
        "query": dict(request.query_params),
        "json": body,
        "authorization": request.headers.get("authorization"),
        "claims": claims,
        "code": None,
    }
    request.app.state.requests.append(entry)
    return entry


def _ok(entry: dict, data: Any) -> JSONResponse:
    entry["code"] = 0
    return JSONResponse(_body(0, "SUCCEED", data))


async def api(request: Request) -> Response:
    """Every signed call: the token first, then the route's own checks."""
    state = request.app.state
    body = await _read_json(request)
    claims, refused = verify_jwt(state, request.headers.get("authorization"))
    if refused is None and state.auth_error is not None:
        claims, refused = None, Refused(state.auth_error)
    entry = _record(request, body, claims)
    try:
        if refused is not None:
            raise refused
        return _ok(entry, _route(request, state, body))
    except Refused as exc:
        entry["code"] = exc.code
        return _refusal(state, exc)


def _route(request: Request, state: Any, body: Any) -> Any:
    path = request.url.path
    kind = request.path_params.get("kind", "images")
    if kind != "images" and kind not in VIDEO_MODELS:
        raise Refused(1202, f"no such method: {path}")
    task_id = request.path_params.get("task_id")
    if task_id is not None:
        return _poll(request, state, kind, task_id)
    if request.method == "GET":  # the task list
        return [_task_data(request, state, tid) for tid in list(state.tasks)[-1:]]
    failure = _pop_failure(state.fail_next_submit)
    if failure is not None:
        raise failure
    if path == "/v1/images/generations":
        body = check_image_body(body)
    else:
        body = check_video_body(kind, body)
    external = body.get("external_task_id")
    if external is not None and _find_task(state, external) is not None:
        raise Refused(1201, "external_task_id: must be unique within the account")
    task_id = str(secrets.randbelow(9 * 10**17) + 10**17)
    state.tasks[task_id] = {"kind": kind, "body": body, "polls": 0, "outcome": state.outcome}
    now = int(time.time() * 1000)
    answer = {"task_id": task_id, "task_status": "submitted", "created_at": now, "updated_at": now}
    if external is not None:
        answer["task_info"] = {"external_task_id": external}
    return answer


def _find_task(state: Any, task_or_external_id: str) -> str | None:
    """Kling's query paths take a task id or the caller's `external_task_id`."""
    if task_or_external_id in state.tasks:
        return task_or_external_id
    for task_id, task in state.tasks.items():
        if task["body"].get("external_task_id") == task_or_external_id:
            return task_id
    return None


def _poll(request: Request, state: Any, kind: str, task_id: str) -> dict:
    failure = _pop_failure(state.fail_next_poll)
    if failure is not None:
        raise failure
    found = _find_task(state, task_id)
    task = state.tasks[found] if found is not None else None
    if task is None or task["kind"] != kind:
        raise Refused(1203, f"task {task_id} does not exist")
    task["polls"] += 1
    return _task_data(request, state, found)


def _task_data(request: Request, state: Any, task_id: str) -> dict:
    task = state.tasks[task_id]
    polls, now = task["polls"], int(time.time() * 1000)
    data: dict[str, Any] = {"task_id": task_id, "created_at": now, "updated_at": now}
    if task["body"].get("external_task_id") is not None:
        data["task_info"] = {"external_task_id": task["body"]["external_task_id"]}
    if task["outcome"] == "never" or polls < state.polls:
        data["task_status"] = "submitted" if polls <= 1 and state.polls > 2 else "processing"
        return data
    if task["outcome"] in ("failed", "refused"):
        data["task_status"] = "failed"
        data["task_status_msg"] = FAILED_MESSAGE if task["outcome"] == "failed" else REFUSAL_MESSAGE
        return data
    base = str(request.base_url).rstrip("/")
    data["task_status"] = "succeed"
    data["task_status_msg"] = ""
    if task["kind"] == "images":
        n = task["body"].get("n", 1)
        images = [{"index": i, "url": f"{base}/results/{task_id}/{i}.png"} for i in range(n)]
        data["task_result"] = {"images": images}
    else:
        video = {
            "id": f"video-{task_id}",
            "url": f"{base}/results/{task_id}/video.mp4",
            "duration": task["body"].get("duration", "5"),
        }
        data["task_result"] = {"videos": [video]}
    return data


async def result(request: Request) -> Response:
    """A result file on the fake's own host (Kling's CDN: no token needed)."""
    state = request.app.state
    _record(request, None, None)
    if state.fail_next_download:
        return Response(b"busy", status_code=state.fail_next_download.pop(0))
    task_id, name = request.path_params["task_id"], request.path_params["name"]
    if task_id not in state.tasks:
        return Response(b"not found", status_code=404)
    if name == "video.mp4":
        return Response(state.mp4, media_type=state.video_content_type)
    index = name.removesuffix(".png")
    if not index.isdigit():
        return Response(b"not found", status_code=404)
    return Response(state.png(int(index)), media_type=state.image_content_type)


def create_fake_kling(
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    polls: int = 2,
) -> Starlette:
    """A fresh fake. Configure the provider with `ACCESS_KEY` and `SECRET_KEY`."""
    app = Starlette(
        routes=[
            Route("/v1/images/generations", api, methods=["GET", "POST"]),
            Route("/v1/images/generations/{task_id}", api, methods=["GET"]),
            Route("/v1/videos/{kind:str}", api, methods=["POST"]),
            Route("/v1/videos/{kind:str}/{task_id}", api, methods=["GET"]),
            Route("/results/{task_id}/{name}", result, methods=["GET"]),
        ]
    )
    state = app.state
    state.access_key, state.secret_key = access_key, secret_key
    state.clock = time.time
    state.polls = polls
    state.outcome = "succeed"
    state.requests = []
    state.tasks = {}
    state.fail_next_submit = []
    state.fail_next_poll = []
    state.fail_next_download = []
    state.auth_error = None
    state.retry_after = None
    state.png = lambda index: fake_png(1024, 768, 0).png(index)
    state.mp4 = fake_mp4()
    state.image_content_type = "image/png"
    state.video_content_type = "video/mp4"
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake Kling API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18997)
    parser.add_argument("--polls", type=int, default=2, help="polls before a task is done")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    app = create_fake_kling(polls=args.polls)
    print(
        f"fake Kling on http://{args.host}:{args.port} "
        f"(access_key {ACCESS_KEY}, secret_key {SECRET_KEY})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
