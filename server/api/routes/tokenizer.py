"""POST /tokenize and /detokenize, as llama.cpp's server has them: for clients that count or inspect tokens."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import CallerDep, HolderDep
from server.api.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)

router = APIRouter()

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 500, 503)}


@router.post("/tokenize", responses=_ERRORS)
async def tokenize(body: TokenizeRequest, holder: HolderDep, _: CallerDep) -> TokenizeResponse:
    engine = holder.engine()
    tokens = engine.tokenize(body.content, add_special=body.add_special)
    if not body.with_pieces:
        return TokenizeResponse(tokens=tokens)
    pieces = [TokenPiece(id=t, piece=engine.token_piece(t).decode(errors="replace")) for t in tokens]
    return TokenizeResponse(tokens=pieces)


@router.post("/detokenize", responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, holder: HolderDep, _: CallerDep) -> DetokenizeResponse:
    return DetokenizeResponse(content=holder.engine().detokenize(body.tokens))
