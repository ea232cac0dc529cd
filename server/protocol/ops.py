"""The operator's endpoints: liveness, readiness, and the tokenizer's /tokenize and /detokenize."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    field_validator,
)

from server.protocol.base import Items, RefusedVersion, RequestBody, current_limits


class TokenizeRequest(RequestBody):
    model: str | None = Field(None, description="The model whose tokenizer to use (default: the first served).")
    content: str = Field(description="At most GGUFSTACK_MAX_TOKENIZE_INPUT characters.")
    add_special: StrictBool = Field(False, description="Add the model's special tokens (BOS) as a prompt would.")
    with_pieces: StrictBool = Field(False, description="Return each token's text beside its id.")

    @field_validator("content", mode="before")
    @classmethod
    def _not_too_long(cls, value: object) -> object:
        most = current_limits().max_tokenize_input
        if isinstance(value, str) and len(value) > most:
            raise ValueError(f"at most {most} characters (this server's GGUFSTACK_MAX_TOKENIZE_INPUT)")
        return value


class DetokenizeRequest(RequestBody):
    model: str | None = Field(None, description="The model whose tokenizer to use (default: the first served).")
    tokens: Items[Annotated[int, Field(ge=0)]] = Field(description="At most GGUFSTACK_MAX_TOKENIZE_INPUT token ids.")

    @field_validator("tokens", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        most = current_limits().max_tokenize_input
        if isinstance(value, list) and len(value) > most:
            raise ValueError(f"at most {most} token ids (this server's GGUFSTACK_MAX_TOKENIZE_INPUT)")
        return value


class Liveness(BaseModel):
    status: Literal["alive", "failing"] = "alive"
    reason: str | None = None


class ReadinessReport(BaseModel):
    status: Literal["ready", "not_ready"]
    state: str
    reason: str
    refused: RefusedVersion | None = Field(None, description="The last new model version refused, and why.")


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeResponse(BaseModel):
    content: str
