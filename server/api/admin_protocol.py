"""Request and response models of the admin API (/admin/keys) and of stored conversations."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    models: list[str] | None = Field(None, description="Models the key may use; absent: all of them.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute; absent: unlimited.")
    tpm: int | None = Field(None, ge=1, description="Prompt + completion tokens per minute; absent: unlimited.")
    owner: str | None = Field(None, max_length=200)


class KeyInfo(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart; never enough to use it.")
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    created: int
    revoked: int | None


class CreatedKey(KeyInfo):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class KeyUsageReport(BaseModel):
    id: str
    object: Literal["api_key.usage"] = "api_key.usage"
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cache_hits: int
    first_request: int | None
    last_request: int | None


class ConversationMessageOut(BaseModel):
    role: str
    content: str
    request_id: str
    created: int


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    messages: list[ConversationMessageOut]
