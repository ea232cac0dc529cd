"""The queue bound seen through the HTTP API: 429, an OpenAI error body and Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from server.api.app import create_app
from server.config.settings import load_settings
from server.engine.base import GenerationRequest, SamplingParams


@pytest.mark.asyncio
async def test_request_beyond_the_queue_gets_429_with_retry_after() -> None:
    app = create_app(load_settings(n_ctx=512, n_slots=1, max_queue=0, n_threads=2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(600):
                if (await client.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            engine = app.state.holder.engine()
            # Hold the only slot (paused, the engine cannot end it first, however fast it decodes); with no queue,
            # the next request must be refused at once.
            async with engine.probe.paused():
                busy = engine.generate(
                    GenerationRequest(engine.tokenize("Hello", add_special=True), SamplingParams(max_tokens=400))
                )
                try:
                    body = {"model": engine.model_id, "prompt": "Hi", "max_tokens": 4}
                    response = await client.post("/v1/completions", json=body)
                finally:
                    await busy.aclose()
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "engine_overloaded"
