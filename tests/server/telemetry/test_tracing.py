"""OpenTelemetry to Azure Monitor: spans reach an ingestion endpoint when a connection string is set, and nothing of
it is even imported when it is not."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.conftest import DEMO_MODEL_ID
from tests.support.ingestion import Ingestion
from tests.support.server import REPO, start_server


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_generation_spans_with_token_counts_reach_application_insights(tmp_path: Path) -> None:
    ingestion = Ingestion()
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
        # Only this machine: no statsbeat or dynamic configuration from Microsoft's endpoints, no VM metadata probe.
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
    }
    server = start_server(tmp_path, env)
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )

        def generation_span() -> dict | None:
            for envelope in ingestion.envelopes:
                data = envelope.get("data", {}).get("baseData", {})
                if data.get("name") == "generate":
                    return data
            return None

        _wait_for(lambda: generation_span() is not None)
        span = generation_span()
        assert span["properties"]["gen_ai.usage.output_tokens"] == str(reply.usage.completion_tokens)
        assert span["properties"]["gen_ai.usage.input_tokens"] == str(reply.usage.prompt_tokens)
        assert span["properties"]["gen_ai.request.model"] == DEMO_MODEL_ID
        _wait_for(
            lambda: any(
                e.get("data", {}).get("baseType") == "RequestData"
                and "/v1/chat/completions" in e["data"]["baseData"].get("name", "")
                for e in ingestion.envelopes
            )
        )
    finally:
        server.stop()
        ingestion.stop()


def test_without_a_connection_string_nothing_of_azure_monitor_is_loaded() -> None:
    # FastAPI itself imports the OpenTelemetry API (a no-op without an SDK); the SDK and the exporter must stay out.
    script = (
        "import sys\n"
        "from server.api.app import create_app\n"
        "from server.config.settings import load_settings\n"
        "create_app(load_settings())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('azure.monitor', 'opentelemetry.sdk'))))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout.strip().replace("'", '"')) == []
