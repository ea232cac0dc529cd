"""Secrets kept out of what the server shows: URLs fit for logs, readiness and `ggufstack settings`."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"
# A URL's query string, wherever it sits in a text (an SDK's error message, say): a SAS token lives there.
_URL_QUERY = re.compile(r"(https?://[^\s?#]*)\?[^\s#]*", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """`url` fit to show (readiness, logs, `ggufstack settings`): a SAS token or other query string and a password
    replaced by REDACTED. GGUFSTACK_BLOB_ACCOUNT_URL may carry a SAS, which is as good as the storage key."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", ""))


def redact_urls(text: str) -> str:
    """`text` with every URL's query string replaced by REDACTED."""
    return _URL_QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)
