"""OpenAI response and stream-chunk shapes."""

from __future__ import annotations

import time
import uuid
from typing import Any

from server.engine.base import Finished


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def completion(rid: str, model: str, text: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finished.finish_reason}],
        "usage": usage(finished),
    }


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_completion(rid: str, model: str, text: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": usage(finished),
    }


def chat_chunk(rid: str, model: str, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(rid: str, model: str, obj: str, finished: Finished) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": now(), "model": model, "choices": [], "usage": usage(finished)}
