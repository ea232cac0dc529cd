"""Continuous streaming load against a server, recording per request which model answered and whether it completed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

MODEL_VERSION_HEADER = "x-ggufstack-model-version"


@dataclass
class StreamRecord:
    started: float
    ended: float = 0.0
    version: str | None = None
    model: str | None = None
    text: str = ""
    finish_reason: str | None = None
    done: bool = False  # saw `data: [DONE]`
    error: str | None = None
    token_times: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.error is None and self.done and self.finish_reason in ("stop", "length")


class StreamLoad:
    """`streams` threads, each sending one streaming chat completion after another until `stop()`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        streams: int = 4,
        max_tokens: int | Sequence[int] = 48,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._url = f"{base_url}/v1/chat/completions"
        self._headers = headers or {}
        self._model = model
        # One count per stream, round the list: streams of different lengths never end all at once.
        self._max_tokens = [max_tokens] if isinstance(max_tokens, int) else list(max_tokens)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.records: list[StreamRecord] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(streams)]

    def start(self) -> StreamLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[StreamRecord]:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)
        return self.records

    def _loop(self, index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(300, connect=10), headers=self._headers) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                record = StreamRecord(started=time.monotonic())
                with self._lock:
                    self.records.append(record)
                max_tokens = self._max_tokens[index % len(self._max_tokens)]
                self._one(client, record, f"Stream {index}, request {n}: tell me about the sea.", max_tokens)
                if record.error:
                    time.sleep(0.2)  # refused (not ready): try again soon, as a client with retries would

    def _one(self, client: httpx.Client, record: StreamRecord, prompt: str, max_tokens: int) -> None:
        body = {
            "model": self._model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
        try:
            with client.stream("POST", self._url, json=body) as response:
                record.version = response.headers.get(MODEL_VERSION_HEADER)
                if response.status_code != 200:
                    record.error = f"HTTP {response.status_code}: {response.read().decode(errors='replace')[:200]}"
                    return
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        record.done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        record.error = json.dumps(chunk["error"])
                        continue
                    record.model = chunk["model"]
                    for choice in chunk["choices"]:
                        if content := choice["delta"].get("content"):
                            record.text += content
                            record.token_times.append(time.monotonic())
                        if choice.get("finish_reason"):
                            record.finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            record.ended = time.monotonic()
