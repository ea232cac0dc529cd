"""What every model source is: something that describes itself, names the model it serves by default, and fetches
a GGUF file to a local path, saying what that cost and which version it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class FetchResult:
    path: Path
    bytes_downloaded: int
    seconds: float
    version: str | None = None  # the source's version of the file (blob version id or ETag); None for local files
    sha256: str | None = None  # when the source already vouches for it (verified blob metadata)
    etag: str | None = None  # what a watcher compares to notice the next version

    @property
    def cache_hit(self) -> bool:
        return self.bytes_downloaded == 0


class ModelSource(Protocol):
    def describe(self) -> str: ...

    def default_model_id(self) -> str: ...

    def fetch(self) -> FetchResult: ...
