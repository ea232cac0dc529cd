"""The server's Prometheus metrics: one registry, names in Prometheus' conventions (base units, `_total` counters).

Request-path metrics are observed where they happen (the HTTP middleware, the generation stage). The engine's load
(slots, queue, KV cells, prefix reuse) is read from `Engine.stats()` at scrape time by `EngineCollector`, so the
engine knows nothing of Prometheus and a scrape never waits on the engine thread.

Other modules, the infra's dashboards, alert rules and autoscaler among them, refer to metrics through the constants
below, never by repeating the strings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.base import EngineStats

PREFIX = "ggufstack"

# Names as a scrape shows them (a counter's samples end in _total, a histogram's in _bucket/_sum/_count).
HTTP_REQUESTS = f"{PREFIX}_http_requests_total"
HTTP_REQUEST_DURATION = f"{PREFIX}_http_request_duration_seconds"
HTTP_REFUSED = f"{PREFIX}_http_refused_total"
ANSWERS_DROPPED = f"{PREFIX}_http_answers_dropped_total"
TIME_TO_FIRST_TOKEN = f"{PREFIX}_time_to_first_token_seconds"
TIME_PER_OUTPUT_TOKEN = f"{PREFIX}_time_per_output_token_seconds"
PROMPT_TOKENS = f"{PREFIX}_prompt_tokens_total"
COMPLETION_TOKENS = f"{PREFIX}_completion_tokens_total"
REQUESTS_REFUSED = f"{PREFIX}_requests_refused_total"
GENERATIONS_RUNNING = f"{PREFIX}_generations_running"
GENERATIONS_WAITING = f"{PREFIX}_generations_waiting"
SLOTS_BUSY = f"{PREFIX}_slots_busy"
SLOTS_TOTAL = f"{PREFIX}_slots_total"
KV_CELLS_USED = f"{PREFIX}_kv_cells_used"
KV_CELLS_TOTAL = f"{PREFIX}_kv_cells_total"
PROMPT_TOKENS_REUSED = f"{PREFIX}_prompt_tokens_reused_total"
MODEL_DOWNLOAD_BYTES = f"{PREFIX}_model_download_bytes_total"
MODEL_DOWNLOAD_DURATION = f"{PREFIX}_model_download_duration_seconds"
MODEL_INFO = f"{PREFIX}_model_info"
MODEL_READY = f"{PREFIX}_model_ready"
CACHE_LOOKUPS = f"{PREFIX}_response_cache_lookups_total"
CACHE_WRITES = f"{PREFIX}_response_cache_writes_total"
RATE_LIMITED = f"{PREFIX}_rate_limited_requests_total"
DEPENDENCY_OUTAGES = f"{PREFIX}_dependency_outages_total"
AUDIT_ROWS_DROPPED = f"{PREFIX}_audit_rows_dropped_total"
AUDIT_QUEUE_DEPTH = f"{PREFIX}_audit_queue_depth"
AUDIT_RECORDS_REFUSED = f"{PREFIX}_audit_records_refused_total"
CONVERSATION_RECORDS_OVER_BUDGET = f"{PREFIX}_conversation_records_over_budget_total"
BACKGROUND_TASK_FAILURES = f"{PREFIX}_background_task_failures_total"
RETENTION_ROWS_DELETED = f"{PREFIX}_retention_rows_deleted_total"
RETENTION_PASSES = f"{PREFIX}_retention_passes_total"
MODEL_SWAPS = f"{PREFIX}_model_swaps_total"
MODEL_SWAP_DURATION = f"{PREFIX}_model_swap_duration_seconds"
MODEL_WATCHER_RUNNING = f"{PREFIX}_model_watcher_running"
MODEL_WATCH_ERRORS = f"{PREFIX}_model_watch_errors_total"
MODEL_REQUESTS = f"{PREFIX}_model_requests_total"
MODEL_LOADS = f"{PREFIX}_model_loads_total"
MODEL_LOAD_DURATION = f"{PREFIX}_model_load_duration_seconds"
MODEL_EVICTIONS = f"{PREFIX}_model_evictions_total"
MODEL_LOADED = f"{PREFIX}_model_loaded"
MODEL_MEMORY = f"{PREFIX}_model_memory_bytes"
MODEL_MEMORY_BUDGET = f"{PREFIX}_model_memory_budget_bytes"
# The label that names the catalogue model a sample is about (its id, never an alias).
MODEL_LABEL = "model"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)


def _base(name: str, suffix: str) -> str:
    return name.removesuffix(suffix)


REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

http_requests = Counter(
    _base(HTTP_REQUESTS, "_total"),
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
http_refused = Counter(
    _base(HTTP_REFUSED, "_total"),
    "Requests the HTTP protocol refused as they arrived (a head too large or too slow, a body too slow, bytes that "
    "are not HTTP), by the error code of the answer; a refused body also counts in http_requests_total.",
    ["code"],
    registry=REGISTRY,
)
answers_dropped = Counter(
    _base(ANSWERS_DROPPED, "_total"),
    "Connections aborted with their answer waiting on the client, by reason: too_slow (it took less than the least "
    "rate), memory_budget (answers waiting on their clients held the most the replica allows, and its the most), "
    "key_budget (its key's waiting answers held the most one key may, and its the most).",
    ["reason"],
    registry=REGISTRY,
)
http_request_duration = Histogram(
    HTTP_REQUEST_DURATION,
    "Time from a request's arrival to its last response byte (a whole stream for streaming requests).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
model_requests = Counter(
    _base(MODEL_REQUESTS, "_total"),
    "Requests admitted to a model's pipeline (generations, embeddings, tokenizer), by model and endpoint.",
    [MODEL_LABEL, "endpoint"],
    registry=REGISTRY,
)
time_to_first_token = Histogram(
    TIME_TO_FIRST_TOKEN,
    "Time from a generation request's arrival to its first generated token, queueing (and a model load) included.",
    [MODEL_LABEL],
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
time_per_output_token = Histogram(
    TIME_PER_OUTPUT_TOKEN,
    "Mean time between generated tokens of one request, after its first.",
    [MODEL_LABEL],
    buckets=_TPOT_BUCKETS,
    registry=REGISTRY,
)
prompt_tokens = Counter(
    _base(PROMPT_TOKENS, "_total"), "Prompt tokens of finished generations.", [MODEL_LABEL], registry=REGISTRY
)
completion_tokens = Counter(
    _base(COMPLETION_TOKENS, "_total"), "Tokens generated by finished generations.", [MODEL_LABEL], registry=REGISTRY
)
requests_refused = Counter(
    _base(REQUESTS_REFUSED, "_total"),
    "Generation requests refused before running, by reason (overloaded: queue full; draining: shutting down; "
    "not_ready: no model serving).",
    ["reason"],
    registry=REGISTRY,
)
generations_running = Gauge(
    GENERATIONS_RUNNING, "Generation requests the server is handling now, queued or decoding.", registry=REGISTRY
)
model_download_bytes = Counter(
    _base(MODEL_DOWNLOAD_BYTES, "_total"), "Bytes of model files downloaded from the model source.", registry=REGISTRY
)
model_download_duration = Histogram(
    MODEL_DOWNLOAD_DURATION,
    "Time to download and verify one model file (cache hits are not counted).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
model_info = Info(
    _base(MODEL_INFO, "_info"),
    "Each loaded model: its id, the sha256 of its GGUF, its source version, and whether layers run on a GPU.",
    [MODEL_LABEL],
    registry=REGISTRY,
)
model_ready = Gauge(
    MODEL_READY, "1 while the server is ready (every pinned model serves, no drain), else 0.", registry=REGISTRY
)
cache_lookups = Counter(
    _base(CACHE_LOOKUPS, "_total"),
    "Response cache lookups of cacheable requests, by result (hit, miss, error: Redis unreachable).",
    ["result"],
    registry=REGISTRY,
)
cache_writes = Counter(
    _base(CACHE_WRITES, "_total"),
    "Answers offered to the response cache, by result (stored; over_budget: the key added its "
    "GGUFSTACK_CACHE_MAX_BYTES_PER_KEY this window; too_large: past GGUFSTACK_CACHE_MAX_ENTRY_BYTES; "
    "error: Redis unreachable).",
    ["result"],
    registry=REGISTRY,
)
rate_limited = Counter(
    _base(RATE_LIMITED, "_total"),
    "Requests refused with 429 by a key's limit, by the limit that refused them (requests, tokens, model_loads, "
    "concurrency).",
    ["limit"],
    registry=REGISTRY,
)
dependency_outages = Counter(
    _base(DEPENDENCY_OUTAGES, "_total"),
    "Times a dependency (postgresql, redis) became unreachable, by the use that noticed (audit log, key checks; all "
    "for Redis); one per outage and use, not per failed call.",
    ["dependency", "use"],
    registry=REGISTRY,
)
audit_rows_dropped = Counter(
    _base(AUDIT_ROWS_DROPPED, "_total"),
    "Audit rows dropped because the in-memory queue was full while PostgreSQL was unreachable.",
    registry=REGISTRY,
)
audit_queue_depth = Gauge(AUDIT_QUEUE_DEPTH, "Audit rows waiting to be written to PostgreSQL.", registry=REGISTRY)
audit_records_refused = Counter(
    _base(AUDIT_RECORDS_REFUSED, "_total"),
    "Audit records PostgreSQL refused for what they hold (a value it cannot store, a limit it enforces): set aside, "
    "logged and never retried, so the records behind them are written.",
    registry=REGISTRY,
)
conversation_records_over_budget = Counter(
    _base(CONVERSATION_RECORDS_OVER_BUDGET, "_total"),
    "Requests whose conversation messages were not stored: their key had stored its "
    "GGUFSTACK_CONVERSATIONS_MAX_BYTES_PER_KEY_PER_DAY that day (their audit rows are written).",
    registry=REGISTRY,
)
background_task_failures = Counter(
    _base(BACKGROUND_TASK_FAILURES, "_total"),
    "Background tasks (the audit writer, migrations) that ended with an error, by task; any is a bug to report.",
    ["task"],
    registry=REGISTRY,
)
retention_rows_deleted = Counter(
    _base(RETENTION_ROWS_DELETED, "_total"),
    "Rows the retention job deleted for being older than their table's retention, by table.",
    ["table"],
    registry=REGISTRY,
)
retention_passes = Counter(
    _base(RETENTION_PASSES, "_total"),
    "Passes of the retention job, by result: done, skipped (another replica was pruning) or failed (retried later).",
    ["result"],
    registry=REGISTRY,
)
model_watcher_running = Gauge(
    MODEL_WATCHER_RUNNING,
    "1 while the watcher checks the model's blob for new versions; 0 when watching is off or the watcher stopped.",
    [MODEL_LABEL],
    registry=REGISTRY,
)
model_watch_errors = Counter(
    _base(MODEL_WATCH_ERRORS, "_total"),
    "Checks for a new model version that failed unexpectedly; the watcher logs each and keeps watching.",
    [MODEL_LABEL],
    registry=REGISTRY,
)
model_swaps = Counter(
    _base(MODEL_SWAPS, "_total"),
    "New model versions the watcher acted on, by result (swapped, refused) and swap mode (beside, in_place; none "
    "when refused before a mode was chosen).",
    ["result", "mode", MODEL_LABEL],
    registry=REGISTRY,
)
model_swap_duration = Histogram(
    MODEL_SWAP_DURATION,
    "Time from noticing a new model version to serving it (download, verification, load and warm-up), by mode.",
    ["mode", MODEL_LABEL],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
model_loads = Counter(
    _base(MODEL_LOADS, "_total"),
    "Loads of catalogue models (at startup, on demand, by an admin), by model and result (loaded, failed).",
    [MODEL_LABEL, "result"],
    registry=REGISTRY,
)
model_load_duration = Histogram(
    MODEL_LOAD_DURATION,
    "Time to make a model serve: fetch (a cache hit, or a download), room in the memory budget, load and warm-up.",
    [MODEL_LABEL],
    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200),
    registry=REGISTRY,
)
model_evictions = Counter(
    _base(MODEL_EVICTIONS, "_total"),
    "Models unloaded, by model and reason (budget: to make room for another; idle: ttl_s; admin).",
    [MODEL_LABEL, "reason"],
    registry=REGISTRY,
)


def forget_model(model_id: str) -> None:
    """An unloaded model's info goes from the scrape (its counters stay)."""
    with contextlib.suppress(KeyError):
        model_info.remove(model_id)


class EngineCollector(Collector):
    """Reads each loaded model's engine stats, and what the models take of the memory budget, at scrape time."""

    def __init__(
        self,
        source: Callable[[], Mapping[str, EngineStats]],
        memory: Callable[[], Mapping[str, int]] = dict,
        budget: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.source = source
        self.memory = memory
        self.budget = budget

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        by_model = self.source()
        gauges: dict[str, tuple[str, Callable[[EngineStats], float]]] = {
            GENERATIONS_WAITING: ("Generations waiting for a free slot.", lambda s: s.queue_depth),
            SLOTS_BUSY: ("Slots decoding a generation.", lambda s: s.slots_busy),
            SLOTS_TOTAL: ("Slots: generations that can decode together.", lambda s: s.slots_total),
            KV_CELLS_USED: ("KV cache cells holding a token, over all slots.", lambda s: s.kv_cells_used),
            KV_CELLS_TOTAL: ("KV cache cells, over all slots.", lambda s: s.kv_cells_total),
        }
        for name, (documentation, value) in gauges.items():
            gauge = GaugeMetricFamily(name, documentation, labels=[MODEL_LABEL])
            for model, stats in by_model.items():
                gauge.add_metric([model], value(stats))
            yield gauge
        reused = CounterMetricFamily(
            _base(PROMPT_TOKENS_REUSED, "_total"),
            "Prompt tokens whose KV a slot already held (prefix reuse), not computed again; resets with the engine.",
            labels=[MODEL_LABEL],
        )
        for model, stats in by_model.items():
            reused.add_metric([model], stats.prompt_tokens_reused_total)
        yield reused
        memory = self.memory()
        loaded = GaugeMetricFamily(MODEL_LOADED, "1 while the catalogue model serves, else 0.", labels=[MODEL_LABEL])
        charged = GaugeMetricFamily(
            MODEL_MEMORY,
            "Memory the model is charged against the budget (weights and KV cache from its GGUF; 0 when unloaded).",
            labels=[MODEL_LABEL],
        )
        for model, n_bytes in memory.items():
            loaded.add_metric([model], 1.0 if model in by_model else 0.0)
            charged.add_metric([model], n_bytes)
        yield loaded
        yield charged
        if (budget := self.budget()) is not None:
            yield GaugeMetricFamily(
                MODEL_MEMORY_BUDGET,
                "Memory the loaded models may take together (GGUFSTACK_MODEL_MEMORY_BUDGET_MIB).",
                budget,
            )


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exported_names() -> set[str]:
    """Every sample name a scrape can show, the engine's included, whether or not it has been observed yet (for the
    tests that keep dashboards, alert rules and the autoscaler's queries to metrics that exist)."""
    empty = EngineStats(0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    engine = EngineCollector(lambda: {"m": empty}, lambda: {"m": 0}, lambda: 0)
    names: set[str] = set()
    for metric in [*REGISTRY.collect(), *engine.collect()]:
        names.update(metric.name + suffix for suffix in _SAMPLE_SUFFIXES.get(metric.type, ("",)))
        names.update(sample.name for sample in metric.samples)
    return names


_engine_stats = EngineCollector(dict)
REGISTRY.register(_engine_stats)


def bind(
    *,
    engine_stats: Callable[[], Mapping[str, EngineStats]],
    in_flight: Callable[[], float],
    ready: Callable[[], bool],
    memory: Callable[[], Mapping[str, int]] = dict,
    budget: Callable[[], int | None] = lambda: None,
) -> None:
    """What a scrape reads from the serving side (one app per process): each loaded model's engine stats by model
    id, the generations in flight, whether the server is ready, and each model's charge against the memory budget.
    Callables, so telemetry knows nothing of who holds the models."""
    _engine_stats.source = engine_stats
    _engine_stats.memory = memory
    _engine_stats.budget = budget
    generations_running.set_function(in_flight)
    model_ready.set_function(lambda: 1.0 if ready() else 0.0)
