"""Log setup: readable text on a terminal, one JSON object per line for collectors; the request id on every line.

The request id lives in a context variable that the HTTP middleware sets for the whole request, streaming included
(tasks started for a stream copy the context). `AccessRecord` is the request's summary, filled in by the stages that
know each fact and written as one access line when the response ends. Neither ever holds a prompt or a secret.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from rich.console import Console
from rich.logging import RichHandler

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


@dataclass(slots=True)
class AccessRecord:
    method: str
    path: str
    client_request_id: str | None = None  # the client's X-Request-Id, beside the server's own id
    route: str = "unmatched"
    status: int = 0
    duration_s: float = 0.0
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    cache_hit: bool | None = None


access_record_var: ContextVar[AccessRecord | None] = ContextVar("access_record", default=None)
access_log = logging.getLogger("server.access")


# Control characters (a path's %0A decodes to a newline) and Unicode line breaks: in a text log, they would start a
# line the client wrote.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with control characters and line breaks escaped (\\x0a), fit for one line of a text log."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_access(record: AccessRecord, *, level: int = logging.INFO) -> None:
    fields = {k: v for k, v in asdict(record).items() if v is not None}
    tokens = ""
    if record.completion_tokens is not None:
        tokens = f" {record.prompt_tokens}+{record.completion_tokens} tokens"
    access_log.log(
        level,
        "%s %s %d in %.3f s%s",
        record.method,
        printable(record.path),
        record.status,
        record.duration_s,
        tokens,
        extra={"fields": fields},
    )


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", None):  # set by _RequestIdFilter
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: Literal["auto", "json", "text"]) -> None:
    console = Console(stderr=True)
    if fmt == "text" or (fmt == "auto" and console.is_terminal):
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    handler.addFilter(_RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # The Azure SDK logs every HTTP request and response at INFO: noise next to our own download and access lines.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
