"""Unit tests of the log format and the request id rules."""

from __future__ import annotations

import json
import logging

from server.api.middleware import client_request_id_from
from server.telemetry import prometheus
from server.telemetry.logging import AccessRecord, JsonFormatter, access_log, log_access, request_id_var


def _format(record: logging.LogRecord) -> dict:
    record.request_id = request_id_var.get()
    return json.loads(JsonFormatter().format(record))


def test_json_line_has_time_level_logger_message_and_request_id() -> None:
    token = request_id_var.set("rid-1")
    try:
        record = logging.LogRecord("server.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
        entry = _format(record)
    finally:
        request_id_var.reset(token)
    assert entry["level"] == "warning" and entry["logger"] == "server.x"
    assert entry["message"] == "hello world" and entry["request_id"] == "rid-1"
    assert entry["time"].endswith("+00:00")


def test_access_line_carries_its_fields_as_json_keys(caplog) -> None:
    record = AccessRecord(method="POST", path="/v1/completions", route="/v1/completions", status=200, duration_s=1.5)
    record.prompt_tokens, record.completion_tokens, record.ttft_s = 7, 3, 0.2
    with caplog.at_level(logging.INFO, logger=access_log.name):
        log_access(record)
    entry = _format(caplog.records[-1])
    assert entry["message"] == "POST /v1/completions 200 in 1.500 s 7+3 tokens"
    assert entry["completion_tokens"] == 3 and entry["ttft_s"] == 0.2 and entry["status"] == 200
    assert "cache_hit" not in entry, "unknown facts are left out, not null"


def test_request_ids_from_clients_are_kept_only_when_plain() -> None:
    def scope(value: bytes) -> dict:
        return {"headers": [(b"x-request-id", value)]}

    assert client_request_id_from(scope(b"abc-123_x.y:z")) == "abc-123_x.y:z"
    for bad in (b"", b"a b", b"line\nbreak", b"x" * 129, "\u00e9".encode()):
        assert client_request_id_from(scope(bad)) is None
    assert client_request_id_from({"headers": []}) is None


def test_exported_names_cover_unobserved_labelled_metrics_and_engine_gauges() -> None:
    names = prometheus.exported_names()
    assert {
        prometheus.HTTP_REQUESTS,
        prometheus.HTTP_REQUEST_DURATION + "_bucket",
        prometheus.TIME_TO_FIRST_TOKEN + "_bucket",
        prometheus.REQUESTS_REFUSED,
        prometheus.SLOTS_BUSY,
        prometheus.GENERATIONS_WAITING,
        prometheus.KV_CELLS_USED,
        prometheus.PROMPT_TOKENS_REUSED,
        prometheus.MODEL_INFO,
        prometheus.MODEL_READY,
    } <= names
