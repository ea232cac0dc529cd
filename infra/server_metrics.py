"""Every PromQL the stack runs against the server's metrics: alert rules, the Grafana dashboard, the autoscaler's query.

All of it is built from the metric names `server/telemetry/prometheus.py` exports, never from repeated strings, so a
renamed metric fails the tests (which compare each name used here with `exported_names()`) instead of silently
turning a dashboard blank or an alert quiet. The dashboard's JSON is also committed (`infra/dashboards/`) for
importing into Grafana; a test keeps the file equal to what this module builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.telemetry.prometheus import (
    ANSWERS_DROPPED,
    COMPLETION_TOKENS,
    GENERATIONS_RUNNING,
    GENERATIONS_WAITING,
    HTTP_REFUSED,
    HTTP_REQUESTS,
    KV_CELLS_TOTAL,
    KV_CELLS_USED,
    MODEL_EVICTIONS,
    MODEL_INFO,
    MODEL_LABEL,
    MODEL_LOAD_DURATION,
    MODEL_LOADED,
    MODEL_LOADS,
    MODEL_MEMORY,
    MODEL_MEMORY_BUDGET,
    MODEL_READY,
    MODEL_REQUESTS,
    PROMPT_TOKENS,
    REQUESTS_REFUSED,
    RETENTION_PASSES,
    SLOTS_BUSY,
    SLOTS_TOTAL,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
)

# The scrape job's name, which Prometheus puts in every series' `job` label; the PodMonitor sets it.
JOB = "ggufstack-server"
SELECTOR = f'job="{JOB}"'
# The dashboard's model selector, on the series that carry a model label (the engine's, tokens, latency, loads).
MODEL_VARIABLE = MODEL_LABEL
OF_MODELS = f'{SELECTOR},{MODEL_LABEL}=~"${MODEL_VARIABLE}"'
DASHBOARD_FILE = Path(__file__).parent / "dashboards" / "ggufstack-server.json"
DASHBOARD_UID = "ggufstack-server"

# Alert thresholds: the first alerts a user needs, deliberately loose so they page on real trouble only.
FIVE_XX_RATIO = 0.05
QUEUE_PER_SLOT = 1.0
TTFT_P95_SECONDS = 5.0
REFUSED_AT_ARRIVAL_PER_SECOND = 1.0


def _bucket(histogram: str) -> str:
    return f"{histogram}_bucket"


def _sum(name: str, window: str = "5m", selector: str = SELECTOR) -> str:
    return f"sum(rate({name}{{{selector}}}[{window}]))"


def _quantile(q: float, histogram: str, window: str = "5m", selector: str = SELECTOR, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({_bucket(histogram)}{{{selector}}}[{window}])))"


def scale_query() -> str:
    """What KEDA scales on: generations waiting for a slot plus those decoding, over all replicas, for the busiest
    model.

    KEDA divides it by the per-replica target; busy slots count as well so a steady load that fills every slot
    holds its replicas even when nothing queues. Each model has its own slots on every replica, so the replicas one
    model's load needs do not shrink because another model is idle: the worst model decides (with one model, the
    same figure as a plain sum).
    """
    per_model = f"sum by ({MODEL_LABEL}) ({{name}}{{{{{SELECTOR}}}}})"
    return f"max({per_model.format(name=GENERATIONS_WAITING)} + {per_model.format(name=SLOTS_BUSY)})"


@dataclass(frozen=True)
class AlertRule:
    name: str
    expression: str
    for_minutes: int
    severity: int  # Azure's 0 (critical) .. 4 (verbose)
    summary: str


def alert_rules() -> list[AlertRule]:
    errors = f'sum(rate({HTTP_REQUESTS}{{{SELECTOR},status=~"5.."}}[5m]))'
    return [
        AlertRule(
            "GgufstackServerNotReady",
            # A replica that scrapes but serves no model, or no replica reporting at all.
            f"(min({MODEL_READY}{{{SELECTOR}}}) < 1) or absent({MODEL_READY}{{{SELECTOR}}})",
            10,
            1,
            "A server replica has not been ready (model loaded, not draining) for 10 minutes.",
        ),
        AlertRule(
            "GgufstackServer5xxRate",
            f"({errors} / {_sum(HTTP_REQUESTS)}) > {FIVE_XX_RATIO}",
            5,
            2,
            f"More than {FIVE_XX_RATIO:.0%} of requests failed with a 5xx for 5 minutes.",
        ),
        AlertRule(
            "GgufstackServerQueueSaturated",
            # A ratio per model (one series, and one alert, each): one model's backlog must not hide behind another
            # model's idle slots, as it would in a ratio of the sums over all models.
            f"(sum by ({MODEL_LABEL}) ({GENERATIONS_WAITING}{{{SELECTOR}}}) / "
            f"sum by ({MODEL_LABEL}) ({SLOTS_TOTAL}{{{SELECTOR}}})) > {QUEUE_PER_SLOT}",
            10,
            2,
            "More generations wait for a model than it has slots, for 10 minutes: the autoscaler is at its maximum or "
            "stuck.",
        ),
        AlertRule(
            "GgufstackServerSlowFirstToken",
            f"{_quantile(0.95, TIME_TO_FIRST_TOKEN, by=f'le, {MODEL_LABEL}')} > {TTFT_P95_SECONDS}",
            10,
            3,
            f"A model's p95 time to first token has been above {TTFT_P95_SECONDS:g}s for 10 minutes.",
        ),
        AlertRule(
            "GgufstackModelLoadsFailing",
            # A pinned model that fails keeps the replica unready (the alert above); one loaded on demand does not.
            f'sum by ({MODEL_LABEL}) (increase({MODEL_LOADS}{{{SELECTOR},result="failed"}}[15m])) > 0',
            15,
            2,
            "Loads of a model have been failing for 15 minutes: requests for it get 503 (see /v1/models for why).",
        ),
        AlertRule(
            "GgufstackRequestsRefusedAtArrival",
            # Refusals before any route (malformed HTTP, a head too large, a head or body that took too long) reach
            # no route, so neither the 5xx ratio nor the audit log shows them; a steady stream means a client or a
            # proxy sending what the server cannot read, or connections held open on purpose (slow requests).
            f"sum by (code) (rate({HTTP_REFUSED}{{{SELECTOR}}}[5m])) > {REFUSED_AT_ARRIVAL_PER_SECOND:g}",
            15,
            3,
            f"More than {REFUSED_AT_ARRIVAL_PER_SECOND:g} request a second has been refused as it arrived for 15 "
            "minutes (by code: a malformed request, a head too large, a head or body too slow); see the server's "
            "warnings for the clients.",
        ),
        AlertRule(
            "GgufstackWaitingAnswersOverBudget",
            # Connections dropped because answers waiting on their clients held all the memory the replica lends
            # them: clients holding answers open on purpose, or a budget too small for the answers clients ask for.
            f'sum(increase({ANSWERS_DROPPED}{{{SELECTOR},reason="memory_budget"}}[15m])) > 0',
            15,
            3,
            "Connections have been dropped for 15 minutes because answers waiting on slow clients held more than "
            "GGUFSTACK_MAX_WAITING_ANSWER_BYTES: clients holding answers open, or a budget too small for the "
            "answers asked for (see the server's warnings for the clients).",
        ),
        AlertRule(
            "GgufstackRetentionFailing",
            # Passes are hourly on every replica and one replica's success is enough (the others skip or fail while
            # it prunes): only failures with no success anywhere in the window mean rows are no longer deleted.
            f'(sum(increase({RETENTION_PASSES}{{{SELECTOR},result="failed"}}[6h])) > 0) unless '
            f'(sum(increase({RETENTION_PASSES}{{{SELECTOR},result="done"}}[6h])) > 0)',
            30,
            3,
            "No replica has deleted expired audit rows, conversation messages and stored responses for 6 hours: every "
            "retention pass failed (the servers log why).",
        ),
    ]


def _panel(panel_id: int, title: str, unit: str, x: int, y: int, targets: dict[str, str]) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(targets.items())
        ],
    }


def model_variable() -> dict[str, Any]:
    """The dashboard's model selector: every catalogue model a replica reports (loaded or not), several or all."""
    query = f"label_values({MODEL_LOADED}{{{SELECTOR}}}, {MODEL_LABEL})"
    return {
        "name": MODEL_VARIABLE,
        "type": "query",
        "label": "Model",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: models come and go with the catalogue
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }


def dashboard() -> dict[str, Any]:
    """The server's Grafana dashboard: throughput, latency percentiles, queue and slots, errors, model version, and
    the catalogue's models (memory, loads, evictions). Panels on series with a model label follow the model selector;
    the rest (HTTP status, generations in flight, readiness) are the whole server's."""
    panels = [
        _panel(
            1,
            "Throughput",
            "short",
            0,
            0,
            {
                "completion tokens/s": _sum(COMPLETION_TOKENS, selector=OF_MODELS),
                "prompt tokens/s": _sum(PROMPT_TOKENS, selector=OF_MODELS),
                "requests/s": _sum(MODEL_REQUESTS, selector=OF_MODELS),
            },
        ),
        _panel(
            2,
            "Time to first token",
            "s",
            12,
            0,
            {f"p{round(q * 100)}": _quantile(q, TIME_TO_FIRST_TOKEN, selector=OF_MODELS) for q in (0.5, 0.9, 0.99)},
        ),
        _panel(
            3,
            "Time per output token",
            "s",
            0,
            8,
            {f"p{round(q * 100)}": _quantile(q, TIME_PER_OUTPUT_TOKEN, selector=OF_MODELS) for q in (0.5, 0.9, 0.99)},
        ),
        _panel(
            4,
            "Queue and slots",
            "short",
            12,
            8,
            {
                "waiting": f"sum({GENERATIONS_WAITING}{{{OF_MODELS}}})",
                "running (all models)": f"sum({GENERATIONS_RUNNING}{{{SELECTOR}}})",
                "slots busy": f"sum({SLOTS_BUSY}{{{OF_MODELS}}})",
                "slots total": f"sum({SLOTS_TOTAL}{{{OF_MODELS}}})",
                "KV cells used (ratio)": f"sum({KV_CELLS_USED}{{{OF_MODELS}}}) / sum({KV_CELLS_TOTAL}{{{OF_MODELS}}})",
            },
        ),
        _panel(
            5,
            "Responses by status",
            "reqps",
            0,
            16,
            {
                "{{status}}": f"sum by (status) (rate({HTTP_REQUESTS}{{{SELECTOR}}}[5m]))",
                "refused: {{reason}}": f"sum by (reason) (rate({REQUESTS_REFUSED}{{{SELECTOR}}}[5m]))",
                "refused on arrival: {{code}}": f"sum by (code) (rate({HTTP_REFUSED}{{{SELECTOR}}}[5m]))",
                "answers dropped: {{reason}}": f"sum by (reason) (rate({ANSWERS_DROPPED}{{{SELECTOR}}}[5m]))",
            },
        ),
        {
            **_panel(
                6,
                "Model version by replica",
                "short",
                12,
                16,
                # Every label of the info metric (model id, sha256, source version, GPU offload) becomes a column.
                {"{{pod}}": f"{MODEL_INFO}{{{OF_MODELS}}}"},
            ),
            "type": "table",
        },
        _panel(
            7,
            "Model memory (largest replica)",
            "bytes",
            0,
            24,
            {
                "{{model}}": f"max by ({MODEL_LABEL}) ({MODEL_MEMORY}{{{OF_MODELS}}})",
                "budget": f"max({MODEL_MEMORY_BUDGET}{{{SELECTOR}}})",
            },
        ),
        _panel(
            8,
            "Model loads and evictions",
            "ops",
            12,
            24,
            {
                "{{model}} {{result}}": f"sum by ({MODEL_LABEL}, result) (rate({MODEL_LOADS}{{{OF_MODELS}}}[5m]))",
                "{{model}} evicted ({{reason}})": (
                    f"sum by ({MODEL_LABEL}, reason) (rate({MODEL_EVICTIONS}{{{OF_MODELS}}}[5m]))"
                ),
            },
        ),
        _panel(
            9,
            "Model load time",
            "s",
            0,
            32,
            {
                f"{{{{model}}}} p{round(q * 100)}": _quantile(
                    q, MODEL_LOAD_DURATION, window="1h", selector=OF_MODELS, by=f"le, {MODEL_LABEL}"
                )
                for q in (0.5, 0.95)
            },
        ),
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "ggufstack server",
        "tags": ["ggufstack"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                model_variable(),
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def expressions() -> list[str]:
    """Every PromQL expression above, for the tests that check each metric name it uses exists."""
    panels = dashboard()["panels"]
    return [scale_query(), *(r.expression for r in alert_rules()), model_variable()["query"]] + [
        target["expr"] for panel in panels for target in panel["targets"]
    ]


if __name__ == "__main__":
    DASHBOARD_FILE.write_text(dashboard_json())
