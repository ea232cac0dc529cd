"""Request ids, the JSON access log and /metrics of a real server process, driven by the official openai client."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from server.telemetry import prometheus
from tests.conftest import DEMO_MODEL_ID, DEMO_NO_EOS
from tests.support.ports import free_port
from tests.support.server import ServerProcess, ready_server, start_server

# A prompt nobody else sends: it must never reach a log line.
SECRET_PROMPT = "zebra-quokka-7731 tell me a story"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ready_server(tmp_path_factory.mktemp("observed"), {"GGUFSTACK_LOG_FORMAT": "json"}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def _log_lines(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def _access_line(server: ServerProcess, client_request_id: str) -> dict:
    """The access line is written once the last byte is sent, which the client may see first: wait for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [
            e
            for e in _log_lines(server)
            if e.get("client_request_id") == client_request_id and e["logger"] == "server.access"
        ]
        if lines:
            (line,) = lines
            return line
        time.sleep(0.05)
    raise AssertionError(f"no access line for {client_request_id}")


def _scrape(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_every_log_line_is_one_json_object(server: ServerProcess) -> None:
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)


def test_the_clients_request_id_is_returned_and_logged(client: openai.OpenAI, server: ServerProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": SECRET_PROMPT}],
        max_tokens=6,
        extra_headers={"X-Request-Id": "req-test-0001"},
    )
    assert raw.headers["x-request-id"] == "req-test-0001"
    completion = raw.parse()
    access = _access_line(server, "req-test-0001")
    assert re.fullmatch(r"[0-9a-f]{32}", access["request_id"]), "the server's own id beside the client's"
    assert access["route"] == "/v1/chat/completions" and access["status"] == 200
    assert access["prompt_tokens"] == completion.usage.prompt_tokens
    assert access["completion_tokens"] == completion.usage.completion_tokens
    assert access["ttft_s"] > 0 and access["duration_s"] >= access["ttft_s"]
    assert SECRET_PROMPT not in server.log()
    assert completion.choices[0].message.content not in server.log()


def test_request_id_is_generated_when_missing_or_unusable(server: ServerProcess) -> None:
    generated = httpx.get(f"{server.base_url}/v1/models", timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    forged = "x" * 200
    replaced = httpx.get(f"{server.base_url}/v1/models", headers={"X-Request-Id": forged}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


def test_streamed_responses_carry_the_request_id(server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "prompt": "Hi", "max_tokens": 3, "stream": True, "logit_bias": DEMO_NO_EOS}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/completions", json=body, headers={"X-Request-Id": "stream-1"}, timeout=60
    ) as r:
        assert r.headers["x-request-id"] == "stream-1"
        list(r.iter_lines())
    access = _access_line(server, "stream-1")
    assert access["completion_tokens"] == 3


def test_metrics_count_requests_tokens_and_latency(client: openai.OpenAI, server: ServerProcess) -> None:
    before = _scrape(server)
    r = client.completions.create(model=DEMO_MODEL_ID, prompt="One, two,", max_tokens=5, logit_bias=DEMO_NO_EOS)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    after = _scrape(server)

    ok = 'ggufstack_http_requests_total{method="POST",route="/v1/completions",status="200"}'
    missing = 'ggufstack_http_requests_total{method="POST",route="/v1/completions",status="404"}'
    assert after[ok] - before.get(ok, 0) == 1
    assert after[missing] - before.get(missing, 0) == 1
    model = f'{{model="{DEMO_MODEL_ID}"}}'
    completion, prompt = f"ggufstack_completion_tokens_total{model}", f"ggufstack_prompt_tokens_total{model}"
    assert after[completion] - before.get(completion, 0) == 5
    assert after[prompt] - before.get(prompt, 0) == r.usage.prompt_tokens
    ttft = f"ggufstack_time_to_first_token_seconds_count{model}"
    assert after[ttft] - before.get(ttft, 0) == 1
    tpot = f"ggufstack_time_per_output_token_seconds_count{model}"
    assert after[tpot] > before.get(tpot, 0)


def test_metrics_show_engine_load_model_and_process(server: ServerProcess, demo_sha256: str) -> None:
    samples = _scrape(server)
    model = f'{{model="{DEMO_MODEL_ID}"}}'
    assert samples[prometheus.SLOTS_TOTAL + model] >= 1
    assert samples[prometheus.SLOTS_BUSY + model] == 0
    assert samples[prometheus.GENERATIONS_WAITING + model] == 0
    assert samples[prometheus.GENERATIONS_RUNNING] == 0
    assert samples[prometheus.KV_CELLS_TOTAL + model] >= samples[prometheus.KV_CELLS_USED + model] > 0
    assert samples[prometheus.MODEL_READY] == 1
    assert samples[prometheus.MODEL_LOADED + model] == 1
    (info,) = [name for name in samples if name.startswith(prometheus.MODEL_INFO + "{")]
    assert f'sha256="{demo_sha256}"' in info and f'model_id="{DEMO_MODEL_ID}"' in info
    assert 'gpu_offload="false"' in info
    assert samples["process_resident_memory_bytes"] > 0
    assert set(n.split("{")[0] for n in samples) <= prometheus.exported_names() | {"python_info"}


def test_metrics_port_serves_metrics_apart_from_the_api(tmp_path) -> None:
    port = free_port()
    process = start_server(tmp_path, {"GGUFSTACK_METRICS_PORT": str(port)})
    try:
        process.wait_ready()
        assert httpx.get(f"{process.base_url}/metrics", timeout=10).status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and prometheus.MODEL_READY in scraped.text
    finally:
        process.stop()
