"""`GET /v1/models` and `GET /v1/models/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.auth import CurrentKey
from gateway.limits import check_model
from gateway.models import resolve_model
from gateway.routes.common import state_of

router = APIRouter()

CREATED = 1767225600  # 2026-01-01: model ids are configuration, not releases


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "inkgate"}


@router.get("/v1/models")
async def list_models(request: Request, key: CurrentKey) -> dict:
    """The models the calling key may use."""
    config = state_of(request).config()
    ids = config.model_ids()
    if key.limits is not None:
        ids = key.limits.visible(ids, config.post_models)
    return {"object": "list", "data": [_model(m) for m in ids]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request, key: CurrentKey) -> dict:
    check_model(key, resolve_model(state_of(request).config(), model_id))
    return _model(model_id)
