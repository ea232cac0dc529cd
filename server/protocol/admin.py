"""The admin API's bodies: API keys (/admin/keys) and stored conversations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
)

from server.protocol.base import Items, RequestBody

_INT32_MAX = 2**31 - 1  # the limits are PostgreSQL integers
# Text a listing shows as it is: no control characters (C0 with NUL, which PostgreSQL text cannot hold, DEL, C1) and no
# Unicode line breaks. In a terminal they are commands (ESC[1A ESC[2K erases the lines above; ESC]8 plants a link).
_PLAIN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=_PLAIN)]


class KeyCreateRequest(RequestBody):
    name: str = Field(min_length=1, max_length=200, pattern=_PLAIN)
    models: Items[ModelName] | None = Field(
        None, min_length=1, max_length=1024, description="Models the key may use; absent: all of them."
    )
    rpm: StrictInt | None = Field(None, ge=1, le=_INT32_MAX, description="Requests per minute; absent: unlimited.")
    tpm: StrictInt | None = Field(
        None, ge=1, le=_INT32_MAX, description="Prompt + completion tokens per minute; absent: unlimited."
    )
    owner: str | None = Field(None, max_length=200, pattern=_PLAIN)


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


class ConversationQuery(BaseModel):
    """`GET /v1/conversations/{id}`: one page of its messages, oldest first, after the message `after` names."""

    model_config = ConfigDict(extra="forbid")
    after: str | None = Field(None, max_length=200, description="A message's id: the page starts after it.")
    limit: int = Field(100, ge=1, le=1000, description="At most this many messages (and about 4 MiB of text).")


class ConversationMessageOut(BaseModel):
    id: str = Field(description="The message's id, for `after`.")
    role: str
    content: str
    request_id: str
    created: int


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    messages: list[ConversationMessageOut]
    first_id: str | None
    last_id: str | None
    has_more: bool = Field(description="More messages follow: read them with `after` set to `last_id`.")
