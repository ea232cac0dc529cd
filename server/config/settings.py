"""The server's configuration contract.

This module is imported by `infra/` to build the pod's environment, so it must depend on nothing but pydantic: the
names of the environment variables are defined here once and both sides use them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from server.config.models import BlobName, ModelEntry, ModelFile, check_catalogue, parse_catalogue
from server.config.request_limits import RequestLimitSettings

ENV_PREFIX = "GGUFSTACK_"
SECRETS_DIR_ENV = "GGUFSTACK_SECRETS_DIR"
# Where Kubernetes mounts secrets as files (the Key Vault CSI driver in AKS); each file is named like the variable.
DEFAULT_SECRETS_DIR = Path("/mnt/secrets-store")


class ModelSourceKind(StrEnum):
    DEMO = "demo"
    LOCAL = "local"
    BLOB = "blob"


# The Key Vault secret that holds each secret setting, and the one place that pairs them: the stack writes these
# secrets (infra/), the pod mounts them as files named like the variables, and `key_vault.py` reads them elsewhere.
KEY_VAULT_SECRETS: Mapping[str, str] = MappingProxyType(
    {
        "database_url": "database-url",
        "redis_url": "redis-url",
        "admin_api_key": "admin-api-key",
        "applicationinsights_connection_string": "applicationinsights-connection-string",
    }
)


class SettingsError(ValueError):
    """Invalid configuration; the message is one line that names the offending variable."""


class Settings(RequestLimitSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    model_path: ModelFile | None = Field(None, description="Local GGUF file to serve; excludes the blob settings.")
    blob_account_url: str | None = Field(
        None,
        description="Blob service URL, e.g. https://acct.blob.core.windows.net; authenticates with "
        "DefaultAzureCredential (workload identity in AKS).",
    )
    blob_connection_string: SecretStr | None = Field(
        None, description="Storage connection string instead of an account URL (Azurite, local development)."
    )
    blob_container: str = Field("models", min_length=3, max_length=63, description="Container holding the model.")
    blob_name: BlobName | None = Field(None, min_length=1, description="Name of the GGUF blob in the container.")
    model_alias: str | None = Field(None, min_length=1, description="Model id served by the API (default: file name).")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "ggufstack" / "models", description="Where downloaded models are kept."
    )
    download_concurrency: int = Field(4, ge=1, le=64, description="Parallel ranged requests while downloading.")
    source_retry_initial_s: float = Field(1.0, gt=0, description="First delay before retrying an unreachable source.")
    source_retry_max_s: float = Field(60.0, gt=0, description="Longest delay between retries of the model source.")
    model_watch_interval_s: float = Field(
        30.0,
        ge=0,
        description="How often the server checks its blob for a new version (a conditional request on the ETag) and "
        "swaps to it; 0 turns watching off.",
    )
    model_version: str | None = Field(
        None,
        min_length=1,
        description="Serve this version of the blob (a version id or sha256 prefix from `ggufstack model list`) "
        "and do not watch.",
    )
    model_swap: Literal["auto", "beside", "in_place"] = Field(
        "auto",
        description="How a new version replaces the serving one: beside (load it next to the old one, no pause), "
        "in_place (report not ready, finish requests in flight, swap, come back); auto picks beside when free "
        "memory holds both.",
    )

    models: Annotated[list[ModelEntry] | None, NoDecode] = Field(
        None,
        description="The model catalogue, a JSON list: each {id, path or blob, version, pin, ttl_s, n_ctx, slots, "
        "n_gpu_layers, alias}; replaces GGUFSTACK_MODEL_PATH, GGUFSTACK_BLOB_NAME, GGUFSTACK_MODEL_ALIAS and "
        "GGUFSTACK_MODEL_VERSION (see docs/models.md).",
    )
    model_memory_budget_mib: int | None = Field(
        None,
        ge=1,
        description="Memory the loaded models may take together (weights and KV cache, from each GGUF's header); "
        "loading one more evicts the least recently used. Unset: the free VRAM (with GPU offload) or RAM at startup, "
        "less headroom.",
    )
    model_load_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a request waits for its model to load (and for memory to free up for it) before a 503 "
        "with Retry-After.",
    )
    model_loads_per_key_per_minute: int = Field(
        10,
        ge=0,
        description="Model loads one API key may start in a minute on one replica; the request that would start one "
        "more gets 429 with Retry-After. 0: no limit. The admin key is not limited.",
    )
    max_concurrent_per_key: int = Field(0, ge=0, description="Requests one API key may have in flight; 0: no cap.")
    lost_model_restart_s: float = Field(
        300.0,
        gt=0,
        description="When a swap in place freed the old model, the new one failed and reloading the old one keeps "
        "failing, /health/live fails after this long, so Kubernetes restarts the server (a fresh process frees what "
        "the failed loads left behind).",
    )
    n_gpu_layers: int = Field(-1, ge=-1, description="Layers offloaded to the GPU; -1 offloads all of them.")
    n_ctx: int = Field(4096, ge=64, le=1_048_576, description="Context window of one request; every slot has its own.")
    n_threads: int = Field(
        default_factory=lambda: max(1, len(os.sched_getaffinity(0))), ge=1, description="CPU threads for inference."
    )
    n_batch: int = Field(512, ge=1, description="Maximum tokens in one llama_decode call.")
    n_slots: int = Field(
        0, ge=0, le=256, description="Concurrent generations; 0 picks up to 8 from n_ctx and the model's KV size."
    )
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; more are refused with 429.")
    max_n: int = Field(
        4,
        ge=1,
        le=128,
        description="Most choices (`n`) one request may ask for; each takes a slot (and never more "
        "than there are slots).",
    )
    embeddings: bool = Field(True, description="Serve POST /v1/embeddings.")
    embedding_pooling: Literal["model", "mean", "cls", "last"] = Field(
        "model",
        description="How embeddings pool a model's hidden states; model: as its GGUF says (generative models say "
        "none, and cannot embed unless this names a pooling).",
    )

    database_url: SecretStr | None = Field(
        None, description="PostgreSQL URL for API keys, the audit log and chat history; a secret."
    )
    redis_url: SecretStr | None = Field(
        None, description="Redis URL (rediss:// for TLS) for rate limits and the response cache; a secret."
    )
    admin_api_key: SecretStr | None = Field(None, min_length=16, description="Key for the admin API; a secret.")
    database_auth: Literal["password", "entra"] = Field(
        "password",
        description="entra: log in to PostgreSQL with a Microsoft Entra token from DefaultAzureCredential (workload "
        "identity) as the password, refreshed before it expires; the URL then names the user and carries no password.",
    )
    redis_auth: Literal["password", "entra"] = Field(
        "password",
        description="entra: AUTH to Azure Managed Redis with the URL's user (the identity's object id) and a Microsoft "
        "Entra token from DefaultAzureCredential, re-sent before it expires.",
    )

    key_vault_url: str | None = Field(
        None,
        description="Key Vault (https://NAME.vault.azure.net) to read the secret settings (database URL, Redis URL, "
        "admin key, Application Insights connection string) from with DefaultAzureCredential, for each of them not set "
        "by a variable or a mounted secret file.",
    )
    key_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        description="How long a validated API key is trusted without asking PostgreSQL again; a revoked key works "
        "for at most this long on other replicas.",
    )
    key_outage_grace_s: float = Field(
        600.0, ge=0, description="While PostgreSQL is unreachable, keys validated this recently keep working."
    )
    ratelimit_fail_closed: bool = Field(
        False, description="Refuse requests with 503 while Redis is unreachable, instead of serving them unlimited."
    )
    cache_ttl_s: int = Field(
        3600,
        ge=0,
        description="How long Redis keeps answers to deterministic requests (temperature 0 or a seed); 0 disables "
        "the response cache.",
    )
    cache_max_bytes_per_key: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Most bytes of answers one API key may add to the response cache per GGUFSTACK_CACHE_TTL_S; "
        "past it, its answers are not cached until that window ends. 0: no limit.",
    )
    cache_max_entry_bytes: int = Field(
        1024 * 1024, ge=0, description="Answers larger than this (encoded) are served but not cached. 0: no limit."
    )
    store_conversations: bool = Field(
        False,
        description="Store prompt and response text in PostgreSQL (X-Conversation-Id, GET /v1/conversations/{id}); "
        "off by default for privacy.",
    )
    conversations_max_bytes_per_key_per_day: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes of conversation text an API key may store a day (UTC); past it, its requests' messages "
        "are not stored until the next day (their audit rows are). 0: no budget.",
    )
    responses_store: bool = Field(
        True, description="Keep Responses API responses a request asks to store; off: none is kept, whatever it asks."
    )
    responses_retention_s: int = Field(
        30 * 86400, ge=1, description="How long a stored Responses API response (store: true) can be read or continued."
    )
    responses_memory_max: int = Field(
        1000, ge=1, description="Without a database: most responses kept in memory (the least recently used go)."
    )
    responses_max_conversation_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest conversation (as JSON) a Responses API response may continue with previous_response_id: "
        "its stored items, input included; larger is a 400.",
    )
    responses_max_bytes_per_key_per_day: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes (as JSON, with what each keeps its conversation longer) an API key's stored Responses API "
        "responses may take in a day (UTC); past it, store: true is a 429 until the next day. 0: no budget.",
    )
    audit_queue_max: int = Field(
        10_000, ge=1, description="Audit records held in memory while PostgreSQL is unreachable; more are dropped."
    )
    audit_queue_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Bytes of audit records held while PostgreSQL is down; more are dropped."
    )
    audit_retention_days: int = Field(
        90,
        ge=0,
        le=36_500,
        description="Audit rows older than this are deleted (hourly, by one replica at a time); 0 keeps them forever.",
    )
    conversations_retention_days: int = Field(
        30,
        ge=0,
        le=36_500,
        description="Stored conversation messages (GGUFSTACK_STORE_CONVERSATIONS) older than this are deleted "
        "(hourly); 0 keeps them forever.",
    )
    cache_scope: Literal["key", "shared"] = Field(
        "key",
        description="key: a cached answer is served only to the API key that asked first, and a prompt cached in "
        "the engine's KV is reused only by the key that sent it (neither a hit nor a faster first token tells one "
        "tenant what another asked); shared: every key shares both.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Start on a non-loopback address with no database and no admin key (an API open to anyone on "
        "the network); without it the server refuses to start.",
    )

    host: str = Field("127.0.0.1", min_length=1, description="Address the HTTP server binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server binds.")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve GET /metrics on this port (same address) instead of the API port, so it never leaves the "
        "cluster.",
    )
    drain_timeout_s: float = Field(
        60.0, ge=0, description="On SIGTERM, how long generations in flight may run on before they are ended."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: readable text on a terminal, one JSON object per line otherwise."
    )
    applicationinsights_connection_string: SecretStr | None = Field(
        None,
        validation_alias="APPLICATIONINSIGHTS_CONNECTION_STRING",
        description="Export OpenTelemetry traces and metrics to this Application Insights resource; a secret.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _catalogue_json(cls, value: object) -> object:
        return parse_catalogue(value)

    @model_validator(mode="after")
    def _one_model_source(self) -> Settings:
        blob_endpoint = self.blob_account_url or self.blob_connection_string
        if self.models is not None:
            self._check_catalogue(bool(blob_endpoint))
        if self.blob_account_url and self.blob_connection_string:
            raise ValueError("set GGUFSTACK_BLOB_ACCOUNT_URL or GGUFSTACK_BLOB_CONNECTION_STRING, not both")
        if self.model_path and (blob_endpoint or self.blob_name):
            raise ValueError("set GGUFSTACK_MODEL_PATH or the GGUFSTACK_BLOB_* settings, not both")
        if blob_endpoint and not self.blob_name and self.models is None:
            raise ValueError("GGUFSTACK_BLOB_NAME is required when a blob account is set (or GGUFSTACK_MODELS)")
        if self.blob_name and not blob_endpoint:
            raise ValueError("GGUFSTACK_BLOB_NAME needs GGUFSTACK_BLOB_ACCOUNT_URL or GGUFSTACK_BLOB_CONNECTION_STRING")
        if self.blob_account_url and not self.blob_account_url.startswith(("https://", "http://")):
            raise ValueError("GGUFSTACK_BLOB_ACCOUNT_URL must be an http(s) URL")
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("GGUFSTACK_METRICS_PORT must differ from GGUFSTACK_PORT (unset, it shares the port)")
        if self.key_vault_url and not self.key_vault_url.startswith("https://"):
            raise ValueError("GGUFSTACK_KEY_VAULT_URL must be an https:// URL")
        if self.model_version and not self.blob_name:
            raise ValueError("GGUFSTACK_MODEL_VERSION pins a version of a blob: it needs GGUFSTACK_BLOB_NAME")
        if self.source_retry_max_s < self.source_retry_initial_s:
            raise ValueError("GGUFSTACK_SOURCE_RETRY_MAX_S must not be below GGUFSTACK_SOURCE_RETRY_INITIAL_S")
        return self

    def _check_catalogue(self, blob_endpoint: bool) -> None:
        single = ("model_path", "blob_name", "model_alias", "model_version")
        if given := [self.env_name(name) for name in single if getattr(self, name) is not None]:
            raise ValueError(f"set GGUFSTACK_MODELS or {', '.join(given)}, not both")
        check_catalogue(self.models or [], blob_endpoint=blob_endpoint)

    @property
    def model_source_kind(self) -> ModelSourceKind:
        if self.model_path:
            return ModelSourceKind.LOCAL
        if self.blob_name:
            return ModelSourceKind.BLOB
        return ModelSourceKind.DEMO

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets `field`; raises KeyError for a field the contract does not have."""
        if field not in cls.model_fields:
            raise KeyError(f"Settings has no field {field!r}")
        alias = cls.model_fields[field].validation_alias
        # A setting other tools read under their own well-known name (APPLICATIONINSIGHTS_CONNECTION_STRING) keeps it.
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"

    @classmethod
    def is_secret(cls, field: str) -> bool:
        annotation = cls.model_fields[field].annotation
        return annotation is SecretStr or SecretStr in get_args(annotation)

    @classmethod
    def to_env(cls, **values: Any) -> dict[str, str]:
        """Validate `values` as settings and return them as environment variables (for a pod spec or a subprocess).

        Only the given fields are returned, so the server's defaults stay the defaults. Secret values are refused: a
        secret belongs in a secret store, referenced by name, never inlined in an env list.
        """
        for field in values:
            cls.env_name(field)
            if cls.is_secret(field):
                raise ValueError(f"{cls.env_name(field)} is a secret: reference it from a secret store instead")
        try:
            cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None
        return {cls.env_name(k): _env_value(v) for k, v in values.items()}


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # the catalogue: JSON, as the server reads it
        items = [v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
        return json.dumps(items, separators=(",", ":"))
    return str(value)


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem, naming the environment variable rather than the Python field."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if loc:
            given = error.get("input")
            secret = loc[0] in Settings.model_fields and Settings.is_secret(loc[0])
            shown = "" if secret or given is None or isinstance(given, dict | list) else f" (got {given!r})"
            # Inside the catalogue: GGUFSTACK_MODELS[1].n_ctx names the entry and its field.
            where = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc[1:])
            lines.append(f"{ENV_PREFIX}{loc[0].upper()}{where}: {message}{shown}")
        else:
            lines.append(message)
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment and the secrets directory (files named like the variables, e.g.
    GGUFSTACK_DATABASE_URL), with `overrides` (e.g. CLI options) taking precedence.

    Raises SettingsError with one line naming each invalid variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    secrets_dir = Path(os.environ.get(SECRETS_DIR_ENV, DEFAULT_SECRETS_DIR))
    if secrets_dir.is_dir():
        given["_secrets_dir"] = secrets_dir
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
