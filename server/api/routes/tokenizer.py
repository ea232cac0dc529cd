"""POST /tokenize and /detokenize, as llama.cpp's server has them: for clients that count or inspect tokens. They pass
the same key, model permission and request limit as a generation (see `server/serving/tokenizer.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from server.api.deps import ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import respond
from server.protocol.base import ErrorResponse
from server.protocol.ops import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.serving.endpoints import tokenizer

router = APIRouter(route_class=KeyFirstRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 429, 500, 503)
}


@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(body: TokenizeRequest, serving: ServingDep, response: Response) -> TokenizeResponse | Response:
    return respond(await tokenizer.tokenize(body, serving), response)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, serving: ServingDep, response: Response) -> DetokenizeResponse | Response:
    return respond(await tokenizer.detokenize(body, serving), response)
