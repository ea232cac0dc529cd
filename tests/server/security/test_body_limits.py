"""Threat: one request big enough to exhaust the server. Without a body limit a client can send gigabytes (the
server buffers them before validating anything), tens of thousands of messages or embedding inputs, or a 1 MB stop
sequence, and every one of them is parsed, rendered and tokenized before the context check says no.

The body limit is counted as the bytes arrive, so a chunked body with no Content-Length is cut off as well, and a
Content-Length above the limit is answered at once without waiting for the body. The caps on message count, stop
sequences, tokenizer input and embedding inputs are checked while the body is validated, before any tokenizing.
Every refusal is OpenAI's error JSON.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from server.config.settings import Settings
from tests.conftest import DEMO_MODEL_ID
from tests.support.server import ServerProcess

MAX_BYTES = Settings.model_fields["max_request_bytes"].default
USER = [{"role": "user", "content": "hi"}]


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_body_over_the_limit_is_a_413(demo_server: ServerProcess) -> None:
    padding = "x" * (MAX_BYTES + 1)
    body = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": padding}]}
    r = httpx.post(f"{demo_server.base_url}/v1/chat/completions", json=body, timeout=30)
    error = _error(r, 413)
    assert error["code"] == "request_too_large" and "GGUFSTACK_MAX_REQUEST_BYTES" in error["message"]


def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit(demo_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "%s", "messages": [{"role": "user", "content": "' % DEMO_MODEL_ID.encode()
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}]}'

    try:
        r = httpx.post(
            f"{demo_server.base_url}/v1/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
    except httpx.WriteError:
        pytest.fail("the server closed the connection instead of answering 413")
    assert "content-length" not in r.request.headers
    assert _error(r, 413)["code"] == "request_too_large"


def test_a_declared_length_over_the_limit_is_refused_without_waiting_for_the_body(demo_server: ServerProcess) -> None:
    """A client announcing a gigabyte and sending nothing must not hold the server's attention."""
    with socket.create_connection(("127.0.0.1", demo_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        answer = b""
        while b"}}" not in answer:  # socket.timeout here: the server waited for the body
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    text = answer.decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), text
    assert '"code":"request_too_large"' in text


def test_a_body_within_the_limit_is_served(demo_server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "prompt": "Hello", "max_tokens": 1}
    r = httpx.post(f"{demo_server.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def _over(field: str) -> int:
    return Settings.model_fields[field].default + 1


# Content parts past the cap on a body's objects and arrays: each is validated on the event loop, at a cost per part,
# so about 150,000 of them in 4 MiB held the loop for a second; one message's worth, whatever the message cap.
EMPTY_PARTS = [{"type": "text", "text": ""}] * _over("max_body_containers")


@pytest.mark.parametrize(
    ("path", "body", "param", "names"),
    [
        (
            "/v1/chat/completions",
            {"model": DEMO_MODEL_ID, "messages": USER * _over("max_messages")},
            "messages",
            "GGUFSTACK_MAX_MESSAGES",
        ),
        (
            "/v1/chat/completions",
            {"model": DEMO_MODEL_ID, "messages": USER, "stop": "s" * _over("max_stop_chars")},
            "stop",
            "characters",
        ),
        (
            "/v1/completions",
            {"model": DEMO_MODEL_ID, "prompt": "hi", "stop": ["a", "s" * _over("max_stop_chars")]},
            "stop",
            "characters",
        ),
        ("/v1/completions", {"model": DEMO_MODEL_ID, "prompt": "hi", "stop": list("abcde")}, "stop", "at most 4"),
        (
            "/v1/embeddings",
            {"model": DEMO_MODEL_ID, "input": ["hi"] * _over("max_embedding_inputs")},
            "input",
            "GGUFSTACK_MAX_EMBEDDING_INPUTS",
        ),
        (
            "/v1/embeddings",
            {"model": DEMO_MODEL_ID, "input": [[1]] * _over("max_embedding_inputs")},
            "input",
            "GGUFSTACK_MAX_EMBEDDING_INPUTS",
        ),
        ("/tokenize", {"content": "a" * _over("max_tokenize_input")}, "content", "GGUFSTACK_MAX_TOKENIZE_INPUT"),
        ("/detokenize", {"tokens": [1] * _over("max_tokenize_input")}, "tokens", "GGUFSTACK_MAX_TOKENIZE_INPUT"),
        (
            "/v1/chat/completions",
            {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": EMPTY_PARTS}]},
            "messages",
            "GGUFSTACK_MAX_BODY_CONTAINERS",
        ),
    ],
    ids=[
        "messages",
        "stop-string",
        "stop-in-list",
        "stop-count",
        "embedding-texts",
        "embedding-token-lists",
        "tokenize",
        "detokenize",
        "chat-content-parts",
    ],
)
def test_caps_refuse_before_any_tokenizing(
    demo_server: ServerProcess, path: str, body: dict, param: str, names: str
) -> None:
    r = httpx.post(f"{demo_server.base_url}{path}", json=body, timeout=60)
    error = _error(r, 400)
    assert error["param"] == param and names in error["message"], error


def test_anthropic_content_blocks_past_the_cap_are_refused_in_anthropics_shape(demo_server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "max_tokens": 1, "messages": [{"role": "user", "content": EMPTY_PARTS}]}
    r = httpx.post(f"{demo_server.base_url}/v1/messages", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "GGUFSTACK_MAX_BODY_CONTAINERS" in error["message"]


def test_a_long_list_of_token_ids_is_one_embedding_input_not_a_batch(demo_server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "input": [1] * _over("max_embedding_inputs")}
    r = httpx.post(f"{demo_server.base_url}/v1/embeddings", json=body, timeout=60)
    assert "GGUFSTACK_MAX_EMBEDDING_INPUTS" not in r.text
