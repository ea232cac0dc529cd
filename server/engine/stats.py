"""Counters and a sliding window of recent speed figures, written by the engine thread and read by `/metrics`."""

from __future__ import annotations

import threading
import time
from collections import deque

from server.engine.base import EngineStats

WINDOW_S = 30.0


class EngineMetrics:
    def __init__(self, slots_total: int) -> None:
        self._lock = threading.Lock()
        self.slots_total = slots_total
        self.requests_finished = 0
        self.requests_rejected = 0
        self.prompt_tokens_total = 0
        self.prompt_tokens_reused_total = 0
        self.completion_tokens_total = 0
        # (time, tokens sampled in that step), (time, ttft), (time, seconds per output token): bounded by WINDOW_S.
        self._tokens: deque[tuple[float, int]] = deque()
        self._ttft: deque[tuple[float, float]] = deque()
        self._tpot: deque[tuple[float, float]] = deque()

    def record_step(self, n_sampled: int) -> None:
        with self._lock:
            self._tokens.append((time.monotonic(), n_sampled))
            self.completion_tokens_total += n_sampled
            self._trim()

    def record_first_token(self, ttft_s: float) -> None:
        with self._lock:
            self._ttft.append((time.monotonic(), ttft_s))

    def record_finished(self, n_prompt: int, n_generated: int, decode_s: float | None) -> None:
        with self._lock:
            self.requests_finished += 1
            self.prompt_tokens_total += n_prompt
            if decode_s is not None and n_generated > 1:
                self._tpot.append((time.monotonic(), decode_s / (n_generated - 1)))

    def record_reused(self, n_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens_reused_total += n_tokens

    def record_rejected(self) -> None:
        with self._lock:
            self.requests_rejected += 1

    def mean_request_s(self) -> float:
        """A rough duration of one request from recent speed, for Retry-After."""
        with self._lock:
            tpot = _mean(self._tpot) or 0.05
        return tpot * 128

    def snapshot(self, slots_busy: int, queue_depth: int, kv_cells_used: int, kv_cells_total: int) -> EngineStats:
        with self._lock:
            self._trim()
            now = time.monotonic()
            span = min(WINDOW_S, now - self._tokens[0][0]) if self._tokens else 0.0
            tokens = sum(n for _, n in self._tokens)
            return EngineStats(
                slots_total=self.slots_total,
                slots_busy=slots_busy,
                queue_depth=queue_depth,
                requests_finished=self.requests_finished,
                requests_rejected=self.requests_rejected,
                prompt_tokens_total=self.prompt_tokens_total,
                prompt_tokens_reused_total=self.prompt_tokens_reused_total,
                completion_tokens_total=self.completion_tokens_total,
                window_s=WINDOW_S,
                recent_tokens_per_s=tokens / span if span > 0 else 0.0,
                recent_ttft_s=_mean(self._ttft),
                recent_time_per_output_token_s=_mean(self._tpot),
                kv_cells_used=kv_cells_used,
                kv_cells_total=kv_cells_total,
            )

    def _trim(self) -> None:
        horizon = time.monotonic() - WINDOW_S
        for window in (self._tokens, self._ttft, self._tpot):
            while window and window[0][0] < horizon:
                window.popleft()


def _mean(window: deque[tuple[float, float]]) -> float:
    return sum(v for _, v in window) / len(window) if window else 0.0
