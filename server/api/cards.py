"""What the API tells about the catalogue's models: their cards in /v1/models and the version each last refused."""

from __future__ import annotations

from server.lifecycle.catalogue import CatalogueModel
from server.lifecycle.holder import Refusal
from server.lifecycle.registry import ModelRegistry
from server.protocol.base import RefusedVersion
from server.protocol.openai_replies import ModelCard


def refused_version(refusal: Refusal | None) -> RefusedVersion | None:
    if refusal is None:
        return None
    return RefusedVersion(version=refusal.version, reason=refusal.reason, refused_at=refusal.at)


def model_card(models: ModelRegistry, model: CatalogueModel) -> ModelCard:
    status = models.status(model)
    served = status.served
    return ModelCard(
        id=model.id,
        created=served.loaded_at if served is not None else 0,
        state=status.state,
        reason=status.reason,
        aliases=list(model.spec.aliases),
        pinned=model.spec.pin,
        sha256=served.sha256 if served is not None else None,
        version=served.source_version if served is not None else None,
        load_seconds=served.load_seconds if served is not None else None,
        memory_mib=round(status.memory_bytes / 2**20, 1) if status.memory_bytes else None,
        refused=refused_version(model.holder.refused),
    )
