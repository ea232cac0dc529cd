"""Picks the model source the settings describe."""

from __future__ import annotations

from server.config.settings import ModelSourceKind, Settings
from server.model_source.base import ModelSource
from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.local import FileModelSource


def model_source(settings: Settings) -> ModelSource:
    if settings.model_source_kind is ModelSourceKind.BLOB:
        location = BlobLocation(
            container=settings.blob_container,
            name=settings.blob_name or "",
            account_url=settings.blob_account_url,
            connection_string=(
                settings.blob_connection_string.get_secret_value() if settings.blob_connection_string else None
            ),
        )
        return BlobModelSource(
            location,
            settings.cache_dir,
            concurrency=settings.download_concurrency,
            pinned_version=settings.model_version,
        )
    return FileModelSource(settings.model_path)
