"""The API document: every status the server answers is documented with OpenAI's error schema (Anthropic's under
/v1/messages), and a bounded schemathesis run over every operation finds no 5xx and no response that contradicts the
document."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.conftest import DEMO_MODEL_ID
from tests.support.server import ServerProcess, ready_server

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
MAX_FUZZ_TOKENS = 8


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A small context keeps every generation the fuzzer asks for short.
    with ready_server(
        tmp_path_factory.mktemp("openapi"), {"GGUFSTACK_N_CTX": "128", "GGUFSTACK_N_SLOTS": "2"}
    ) as process:
        yield process


@pytest.fixture(scope="module")
def document(small_server: ServerProcess) -> dict:
    return httpx.get(f"{small_server.base_url}/openapi.json", timeout=10).json()


@pytest.mark.parametrize("path", GENERATION_PATHS)
def test_generation_endpoints_document_every_status_they_answer(document: dict, path: str) -> None:
    responses = document["paths"][path]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "404", "429", "500", "503"}
    for status in set(responses) - {"200"}:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_messages_endpoints_document_anthropics_errors_and_events(document: dict) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "403", "404", "429", "500", "503"}
        for status in set(responses) - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/AnthropicError"}
    ok = document["paths"]["/v1/messages"]["post"]["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Message"}
    event = ok["text/event-stream"]["schema"]
    assert event["required"] == ["event", "data"]
    names = {ref["$ref"].rsplit("/", 1)[1] for ref in event["properties"]["data"]["contentSchema"]["anyOf"]}
    assert {"MessageStartEvent", "ContentBlockDeltaEvent", "MessageDeltaEvent", "PingEvent", "AnthropicError"} <= names
    assert names <= set(document["components"]["schemas"])
    request = document["components"]["schemas"]["MessagesRequest"]
    assert request["additionalProperties"] is False and {"model", "messages", "max_tokens"} <= set(request["required"])


def test_request_schemas_match_what_the_server_accepts(document: dict) -> None:
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False
    assert {"model", "messages"} <= set(chat["required"])
    assert document["components"]["schemas"]["CompletionRequest"]["additionalProperties"] is False
    responses = document["components"]["schemas"]["ResponseRequest"]
    assert responses["additionalProperties"] is False and set(responses["required"]) == {"model", "input"}


OPERATIONS = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("GET", "/v1/responses/{response_id}/input_items"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/conversations/{conversation_id}"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("GET", "/admin/keys/{key_id}/usage"),
    ("POST", "/admin/models/{model_id}/load"),
    ("POST", "/admin/models/{model_id}/unload"),
]


def test_the_fuzzed_operations_are_all_there_are(document: dict) -> None:
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)


@pytest.fixture(scope="module")
def api_schema(small_server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{small_server.base_url}/openapi.json")


def _servable(body: dict, path: str) -> None:
    """Aim generated bodies at the served model (else nearly all stop at 404) and keep generations short."""
    body["model"] = DEMO_MODEL_ID
    names = ("max_output_tokens",) if path == "/v1/responses" else ("max_tokens", "max_completion_tokens")
    limits = [key for key in names if key in body]
    if not limits and path in GENERATION_PATHS:
        body[names[0]] = MAX_FUZZ_TOKENS
    for key in limits:
        if isinstance(body[key], int) and body[key] > MAX_FUZZ_TOKENS:
            body[key] = MAX_FUZZ_TOKENS


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_operation_answers_5xx_or_off_the_document(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    # schemathesis' own pytest integration does not run under pytest 9, so hypothesis drives each operation here.
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def fuzz(case: schemathesis.Case) -> None:
        # Schema-valid is not always servable: the model must be the one served, token ids within the vocabulary,
        # the prompt within the context. Those answers are documented 400/404s, so positive-data acceptance is off.
        if isinstance(case.body, dict) and "model" in case.body:
            _servable(case.body, path)
        case.call_and_validate(timeout=60, excluded_checks=[positive_data_acceptance])

    fuzz()
