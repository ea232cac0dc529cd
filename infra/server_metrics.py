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
    COMPLETION_TOKENS,
    GENERATIONS_RUNNING,
    GENERATIONS_WAITING,
    HTTP_REQUESTS,
    KV_CELLS_TOTAL,
    KV_CELLS_USED,
    MODEL_INFO,
    MODEL_READY,
    PROMPT_TOKENS,
    REQUESTS_REFUSED,
    SLOTS_BUSY,
    SLOTS_TOTAL,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
)

# The scrape job's name, which Prometheus puts in every series' `job` label; the PodMonitor sets it.
JOB = "ggufstack-server"
SELECTOR = f'job="{JOB}"'
DASHBOARD_FILE = Path(__file__).parent / "dashboards" / "ggufstack-server.json"
DASHBOARD_UID = "ggufstack-server"

# Alert thresholds: the first alerts a user needs, deliberately loose so they page on real trouble only.
FIVE_XX_RATIO = 0.05
QUEUE_PER_SLOT = 1.0
TTFT_P95_SECONDS = 5.0


def _bucket(histogram: str) -> str:
    return f"{histogram}_bucket"


def _sum(name: str, window: str = "5m") -> str:
    return f"sum(rate({name}{{{SELECTOR}}}[{window}]))"


def _quantile(q: float, histogram: str, window: str = "5m") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({_bucket(histogram)}{{{SELECTOR}}}[{window}])))"


def scale_query() -> str:
    """What KEDA scales on: generations waiting for a slot plus those decoding, over all replicas.

    KEDA divides it by the per-replica target; busy slots count as well so a steady load that fills every slot
    holds its replicas even when nothing queues.
    """
    return f"sum({GENERATIONS_WAITING}{{{SELECTOR}}}) + sum({SLOTS_BUSY}{{{SELECTOR}}})"


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
            f"(sum({GENERATIONS_WAITING}{{{SELECTOR}}}) / sum({SLOTS_TOTAL}{{{SELECTOR}}})) > {QUEUE_PER_SLOT}",
            10,
            2,
            "More generations wait than there are slots, for 10 minutes: the autoscaler is at its maximum or stuck.",
        ),
        AlertRule(
            "GgufstackServerSlowFirstToken",
            f"{_quantile(0.95, TIME_TO_FIRST_TOKEN)} > {TTFT_P95_SECONDS}",
            10,
            3,
            f"p95 time to first token has been above {TTFT_P95_SECONDS:g}s for 10 minutes.",
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


def dashboard() -> dict[str, Any]:
    """The server's Grafana dashboard: throughput, latency percentiles, queue and slots, errors, model version."""
    panels = [
        _panel(
            1,
            "Throughput",
            "short",
            0,
            0,
            {
                "completion tokens/s": _sum(COMPLETION_TOKENS),
                "prompt tokens/s": _sum(PROMPT_TOKENS),
                "requests/s": _sum(HTTP_REQUESTS),
            },
        ),
        _panel(
            2,
            "Time to first token",
            "s",
            12,
            0,
            {f"p{round(q * 100)}": _quantile(q, TIME_TO_FIRST_TOKEN) for q in (0.5, 0.9, 0.99)},
        ),
        _panel(
            3,
            "Time per output token",
            "s",
            0,
            8,
            {f"p{round(q * 100)}": _quantile(q, TIME_PER_OUTPUT_TOKEN) for q in (0.5, 0.9, 0.99)},
        ),
        _panel(
            4,
            "Queue and slots",
            "short",
            12,
            8,
            {
                "waiting": f"sum({GENERATIONS_WAITING}{{{SELECTOR}}})",
                "running": f"sum({GENERATIONS_RUNNING}{{{SELECTOR}}})",
                "slots busy": f"sum({SLOTS_BUSY}{{{SELECTOR}}})",
                "slots total": f"sum({SLOTS_TOTAL}{{{SELECTOR}}})",
                "KV cells used (ratio)": f"sum({KV_CELLS_USED}{{{SELECTOR}}}) / sum({KV_CELLS_TOTAL}{{{SELECTOR}}})",
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
                {"{{pod}}": f"{MODEL_INFO}{{{SELECTOR}}}"},
            ),
            "type": "table",
        },
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "ggufstack server",
        "tags": ["ggufstack"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def expressions() -> list[str]:
    """Every PromQL expression above, for the tests that check each metric name it uses exists."""
    panels = dashboard()["panels"]
    return [scale_query(), *(r.expression for r in alert_rules())] + [
        target["expr"] for panel in panels for target in panel["targets"]
    ]


if __name__ == "__main__":
    DASHBOARD_FILE.write_text(dashboard_json())
