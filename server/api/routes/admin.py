"""The admin API: issue, list and revoke API keys and read their usage, load and unload catalogue models; authorised
by GGUFSTACK_ADMIN_API_KEY."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, status

from server.api.cards import model_card
from server.api.deps import AdminDep, AdminKeysDep, ModelsDep, PlaneDep, SettingsDep
from server.api.gates import AdminKeyFirstRoute
from server.errors import APIError
from server.lifecycle.catalogue import CatalogueModel
from server.lifecycle.failures import PinnedModelError
from server.lifecycle.registry import ModelRegistry
from server.protocol.admin import CreatedKey, KeyCreateRequest, KeyInfo, KeyList, KeyUsageReport
from server.protocol.base import ErrorResponse
from server.protocol.openai_replies import ModelCard
from server.serving.pipeline.admission import model_not_found
from server.store.errors import StoreUnavailableError
from server.store.keys import KeyRecord

router = APIRouter(prefix="/admin", route_class=AdminKeyFirstRoute)
RESPONSES: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 429, 500, 503)}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (401, 404, 409, 429, 500, 503)}


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _info(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "owner": record.owner,
        "prefix": record.prefix,
        "models": record.models,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "created": _unix(record.created_at),
        "revoked": _unix(record.revoked_at),
    }


def _unavailable(exc: StoreUnavailableError) -> APIError:
    return APIError(
        503, str(exc), type="service_unavailable", code="database_unavailable", headers={"Retry-After": "5"}
    )


def _not_found(key_id: str) -> APIError:
    return APIError(404, f"no API key with id {key_id!r}", type="not_found_error", code="key_not_found")


def _model_ids(registry: ModelRegistry, names: list[str] | None) -> list[str] | None:
    """A key's models as catalogue ids: a request is checked against the id its model name resolves to, so a key
    that named an alias would be refused the very model it was made for. A name the catalogue does not know is kept
    as given: keys outlive a catalogue, and one may name a model a later deploy adds."""
    if names is None:
        return None
    return list(dict.fromkeys(found.id if (found := registry.resolve(n)) is not None else n for n in names))


@router.post("/keys", status_code=status.HTTP_201_CREATED, responses=RESPONSES)
async def create_key(body: KeyCreateRequest, keys: AdminKeysDep, registry: ModelsDep) -> CreatedKey:
    models = _model_ids(registry, body.models)
    try:
        record, key = await keys.create(body.name, models=models, rpm=body.rpm, tpm=body.tpm, owner=body.owner)
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    return CreatedKey(key=key, **_info(record))


@router.get("/keys", responses=RESPONSES)
async def list_keys(keys: AdminKeysDep) -> KeyList:
    try:
        records = await keys.list()
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    return KeyList(data=[KeyInfo(**_info(r)) for r in records])


@router.delete("/keys/{key_id}", responses=RESPONSES)
async def revoke_key(key_id: str, keys: AdminKeysDep, plane: PlaneDep) -> KeyInfo:
    try:
        record = await keys.revoke(key_id)
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    if record is None:
        raise _not_found(key_id)
    if plane.verifier is not None:
        plane.verifier.forget(key_id)
    return KeyInfo(**_info(record))


@router.get("/keys/{key_id}/usage", responses=RESPONSES)
async def key_usage(key_id: str, keys: AdminKeysDep) -> KeyUsageReport:
    try:
        if await keys.get(key_id) is None:
            raise _not_found(key_id)
        usage = await keys.usage(key_id)
    except StoreUnavailableError as exc:
        raise _unavailable(exc) from None
    return KeyUsageReport(
        id=key_id,
        requests=usage.requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        cache_hits=usage.cache_hits,
        first_request=_unix(usage.first_request),
        last_request=_unix(usage.last_request),
    )


def _catalogue_model(models: ModelRegistry, model_id: str) -> CatalogueModel:
    found = models.resolve(model_id)
    if found is None:
        raise model_not_found(models, model_id)
    return found


@router.post("/models/{model_id:path}/load", responses=MODEL_RESPONSES)
async def load_model(model_id: str, models: ModelsDep, _: AdminDep) -> ModelCard:
    """Load a catalogue model now (evicting idle ones if memory needs it); answers once it serves, or 503."""
    found = _catalogue_model(models, model_id)
    await models.load(found)
    return model_card(models, found)


@router.post("/models/{model_id:path}/unload", responses=MODEL_RESPONSES)
async def unload_model(model_id: str, models: ModelsDep, settings: SettingsDep, _: AdminDep) -> ModelCard:
    """Unload a model that is not pinned (409 for a pinned one): the generations in flight on it finish first (up to
    GGUFSTACK_DRAIN_TIMEOUT_S); a later request for it loads it again."""
    found = _catalogue_model(models, model_id)
    try:
        await models.unload(found, settings.drain_timeout_s)
    except PinnedModelError as exc:
        raise APIError(409, str(exc), type="invalid_request_error", code="model_pinned") from None
    return model_card(models, found)
