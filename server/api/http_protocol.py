"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol with bounds on how a request arrives and on
how long an answer may wait for its client, and with pipelined requests told of a disconnect."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api.answer_departure import StalledReaderProtocol
from server.api.pipelining import PipeliningAwareProtocol
from server.api.request_arrival import BoundedArrivalProtocol, drop_uvicorns_refusal_line
from server.api.waiting_answers import WaitingAnswers
from server.config.settings import Settings


def http_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    drop_uvicorns_refusal_line()
    limits = {
        "max_head_bytes": settings.max_request_head_bytes,
        "head_timeout_s": settings.request_head_timeout_s,
        "body_timeout_s": settings.request_body_timeout_s,
        "send_timeout_s": settings.stream_send_timeout_s,
        "send_min_bytes_per_s": settings.stream_send_min_bytes_per_s,
        "waiting_answers": WaitingAnswers(settings.max_waiting_answer_bytes, settings.max_waiting_answer_bytes_per_key),
    }
    return type("ServerProtocol", (BoundedArrivalProtocol, StalledReaderProtocol, PipeliningAwareProtocol), limits)
