"""What the serving layer returns to a route: a whole response, or a stream of chunks, with the headers stages set."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

from server.engine.base import Finished
from server.protocol.openai_replies import Usage

Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Reply(Generic[Body]):
    headers: dict[str, str] = field(default_factory=dict)
    body: Body | None = None
    # The body already written as JSON, off the event loop: an answer of hundreds of thousands of items (a tokenizer's
    # pieces) would otherwise be that many pydantic objects, checked and written again by the route on the loop.
    rendered: bytes | None = None
    chunks: AsyncGenerator[BaseModel, None] | None = None
    # Each chunk's `type` names its server-sent event (`event:` line), and no `[DONE]` follows: the Responses API.
    event_names: bool = False
    # Run once the response is over, however it ended: returns the request's hold on its model even when `chunks`
    # never started (then no line of theirs runs, `finally` included).
    close: Callable[[], Awaitable[None]] | None = None
    # Told of a failure while the chunks were being sent (a chunk that cannot be serialised), before they are closed:
    # the failure becomes the request's recorded outcome, not a client that went away.
    fail: Callable[[Exception], None] | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(finished: Finished) -> Usage:
    return Usage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )
