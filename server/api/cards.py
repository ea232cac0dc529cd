"""What the API tells about the served model: its card in /v1/models and the version it last refused."""

from __future__ import annotations

from server.lifecycle.holder import Refusal, ServedModel
from server.protocol.base import RefusedVersion
from server.protocol.openai_replies import ModelCard


def refused_version(refusal: Refusal | None) -> RefusedVersion | None:
    if refusal is None:
        return None
    return RefusedVersion(version=refusal.version, reason=refusal.reason, refused_at=refusal.at)


def model_card(served: ServedModel, refusal: Refusal | None) -> ModelCard:
    return ModelCard(
        id=served.model_id,
        created=served.loaded_at,
        sha256=served.sha256,
        version=served.source_version,
        load_seconds=served.load_seconds,
        refused=refused_version(refusal),
    )
