"""Threats to what the operator configured and what operators read. A SAS token in GGUFSTACK_BLOB_ACCOUNT_URL (as
good as the storage key) was shown by /health/ready, the logs and `ggufstack settings`: query strings are redacted
wherever a URL is shown. A path with %0A wrote a line of the client's choosing into the text-format access log:
control characters and line breaks are escaped."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.cli import run_cli
from tests.support.ports import free_port
from tests.support.server import ServerProcess, start_server

SAS = "sv=2025-01-05&ss=b&srt=co&sp=rl&sig=SeCrEtSiGnAtUrE%3D"


@pytest.fixture(scope="module")
def blob_server(tmp_path_factory) -> Iterator[tuple[ServerProcess, str]]:
    """A server whose blob account (with a SAS) is unreachable: it never gets ready, and says why."""
    account_url = f"http://127.0.0.1:{free_port()}/devstoreaccount1?{SAS}"
    env = {
        "GGUFSTACK_BLOB_ACCOUNT_URL": account_url,
        "GGUFSTACK_BLOB_NAME": "model.gguf",
        "GGUFSTACK_LOG_FORMAT": "text",
        "GGUFSTACK_SOURCE_RETRY_MAX_S": "2",
        # No Azure identity here: the credential chain must fail fast rather than probe the VM metadata service.
        "AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential",
    }
    server = start_server(tmp_path_factory.mktemp("redaction"), env)
    try:
        yield server, account_url
    finally:
        server.stop()


def test_a_sas_token_in_the_blob_account_url_is_never_shown(blob_server) -> None:
    server, account_url = blob_server
    report = server.wait_for(lambda r: "devstoreaccount1" in r.text, 60, "reporting the blob").json()
    assert "REDACTED" in report["reason"] and "sig=" not in report["reason"], report
    shown = run_cli("settings", GGUFSTACK_BLOB_ACCOUNT_URL=account_url, GGUFSTACK_BLOB_NAME="model.gguf")
    assert shown.returncode == 0, shown.stderr
    assert "devstoreaccount1?REDACTED" in shown.stdout and "SeCrEt" not in shown.stdout
    assert "SeCrEt" not in server.log() and "sig=" not in server.log()


def test_a_newline_in_a_path_does_not_start_a_log_line(blob_server) -> None:
    server, _ = blob_server
    r = httpx.get(f"{server.base_url}/health/live%0AINFO%20forged-admin-login%0D%1B[2J", timeout=10)
    assert r.status_code == 404
    server.wait_for(lambda _: "forged-admin-login" in server.log(), 10, "logging the request")
    lines = [line for line in server.log().splitlines() if "forged-admin-login" in line]
    assert len(lines) == 1 and "\\x0aINFO forged-admin-login\\x0d\\x1b[2J" in lines[0], lines
