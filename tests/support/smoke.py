"""What a user's first minutes with a deployed server look like, through the official openai SDK.

Shared by the tests of the artefacts users run (the runtime environment, the container image), so each proves the
same things: readiness, chat, a stream, a JSON-schema answer, a forced tool call, an embedding and the metrics page.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def exercise(base_url: str, model: str, *, api_key: str = "unused") -> None:
    """Every call a new user makes first; raises AssertionError (or the SDK's error) on the first that fails."""
    assert httpx.get(f"{base_url}/health/ready", timeout=10).status_code == 200
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "Say hello."}]

    assert [m.id for m in client.models.list().data] == [model]

    reply = client.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    shaped = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        max_tokens=60,
        seed=7,
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content), PERSON)

    called = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        seed=3,
    )
    (call,) = called.choices[0].message.tool_calls[:1]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    vectors = client.embeddings.create(model=model, input=["a cat sat", "stock markets fell"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) > 0

    metrics = httpx.get(f"{base_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ggufstack_completion_tokens_total" in metrics.text
