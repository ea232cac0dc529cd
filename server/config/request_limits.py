"""The limits every request is held to, from its head to the items in its body, and how long and how much of its
answer may wait on its client: the settings a hostile client meets first. `Settings` inherits them, so they are read
from the same environment variables (`GGUFSTACK_MAX_...`). Like `settings.py`, this depends on nothing but pydantic."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class RequestLimitSettings(BaseSettings):
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes, counted as it arrives (chunked bodies too); larger is a 413.",
    )
    # Above Envoy's default (`max_request_headers_kb`, 60 KiB: envoyproxy.io, HttpConnectionManager v3 proto), so a
    # head the AKS gateway forwards always fits.
    max_request_head_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="Largest request line plus headers in bytes, counted as they arrive; larger is a 431.",
    )
    request_head_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a request line and headers may take to arrive, from their first byte (a new connection: "
        "from its opening); slower is a 408.",
    )
    request_body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long a request body may take to arrive after the headers, while the server is reading it; "
        "slower is a 408.",
    )
    max_messages: int = Field(1024, ge=1, description="Most messages one chat request may carry.")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop sequence, in characters (at most 4 per request).")
    max_tokenize_input: int = Field(
        262_144, ge=1, description="Longest input of /tokenize (characters) and /detokenize (token ids)."
    )
    max_embedding_inputs: int = Field(2048, ge=1, description="Most inputs one embeddings request may carry.")
    # A body is parsed and validated on the event loop at a cost per object, not per byte, while every stream on the
    # replica waits (docs/security.md, "Bodies cost per object").
    max_body_containers: int = Field(
        32_768,
        ge=64,
        description="Most JSON objects and arrays one request body may hold (the body itself included); more is a 400.",
    )
    stream_send_timeout_s: float = Field(
        30.0, gt=0, description="A client that takes no chunk, ping or byte of its answer for this long is dropped."
    )
    stream_send_min_bytes_per_s: int = Field(
        1024, ge=0, description="While an answer waits on its client, the least it must take a second (0: any byte)."
    )
    max_waiting_answer_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes of answers a replica holds for clients not keeping up with them, together; past it, "
        "the connections holding the most are dropped.",
    )
    max_waiting_answer_bytes_per_key: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Most bytes of those answers one API key's requests may have held at once; past it, that key's "
        "connections holding the most are dropped. 0: no bound per key.",
    )
