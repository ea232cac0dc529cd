"""The model catalogue: which models one server may serve (`GGUFSTACK_MODELS`), each with its own source and limits.

Like the settings, this is part of the configuration contract `infra/` builds the pod's environment from, so it
depends on nothing but pydantic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# An id a request may name: what OpenAI clients send as `model` and what a URL path (/v1/models/{id}) can carry.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
ModelName = Annotated[str, Field(pattern=f"^{MODEL_NAME.pattern}$")]


def _a_file(value: object) -> object:
    # Before it becomes a Path: Path("") is Path("."), a directory, never a GGUF file.
    if isinstance(value, str) and Path(value.strip()).name in ("", ".", ".."):
        raise ValueError("must name a GGUF file, not a directory")
    return value


def _a_blob(value: str) -> str:
    # The name becomes a directory of the download cache: "." or ".." would be the container's own, or the cache's.
    if value.strip("/") in (".", ".."):
        raise ValueError("must name a blob, not a directory")
    return value


# A GGUF file's path and a blob's name, as the catalogue's entries and the one-model settings take them.
ModelFile = Annotated[Path, BeforeValidator(_a_file)]
BlobName = Annotated[str, AfterValidator(_a_blob)]


class ModelEntry(BaseModel):
    """One model of the catalogue; unset limits take the server-wide settings (GGUFSTACK_N_CTX, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ModelName = Field(description="What requests name as `model`.")
    path: ModelFile | None = Field(None, description="A local GGUF file.")
    blob: BlobName | None = Field(
        None, min_length=1, description="A GGUF blob in GGUFSTACK_BLOB_CONTAINER; watched for new versions."
    )
    version: str | None = Field(
        None,
        min_length=1,
        description="Serve this version of the blob (as `ggufstack model list` shows) and do not watch it.",
    )
    pin: bool = Field(False, description="Load at startup and never evict or unload; readiness waits for it.")
    ttl_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Unload after this long without a request."
    )
    n_ctx: int | None = Field(None, ge=64, le=1_048_576, description="Context window of one request.")
    slots: int | None = Field(None, ge=0, le=256, description="Concurrent generations; 0 picks as GGUFSTACK_N_SLOTS.")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers offloaded to the GPU; -1: all.")
    alias: list[ModelName] = Field(default_factory=list, description="Other names requests may use.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.path is None) == (self.blob is None):
            raise ValueError(f"model {self.id!r}: set exactly one of path or blob")
        if self.version is not None and self.blob is None:
            raise ValueError(f"model {self.id!r}: version pins a version of a blob: it needs blob")
        if self.pin and self.ttl_s is not None:
            raise ValueError(f"model {self.id!r}: a pinned model is never unloaded, so it takes no ttl_s")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.alias)


def parse_catalogue(value: object) -> object:
    """GGUFSTACK_MODELS arrives as JSON text; a parse error is one line that says where."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None


def check_catalogue(entries: list[ModelEntry], *, blob_endpoint: bool) -> None:
    """Every id and alias names one model; blobs need a blob account."""
    if not entries:
        raise ValueError("GGUFSTACK_MODELS lists no model: unset it to serve one model from the single-model settings")
    seen: dict[str, str] = {}
    for entry in entries:
        for name in entry.names:
            if name in seen:
                raise ValueError(f"GGUFSTACK_MODELS: the name {name!r} is used by both {seen[name]!r} and {entry.id!r}")
            seen[name] = entry.id
    if not blob_endpoint and (blobs := [m.id for m in entries if m.blob is not None]):
        where = "GGUFSTACK_BLOB_ACCOUNT_URL or GGUFSTACK_BLOB_CONNECTION_STRING"
        raise ValueError(f"GGUFSTACK_MODELS: {', '.join(blobs)} come from blobs: set {where}")
