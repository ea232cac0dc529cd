"""Threat: a client without a key making the server read and parse its bodies. FastAPI parses a route's JSON body
before it resolves the route's dependencies, so a key checked by a dependency let any client send bodies of up to
GGUFSTACK_MAX_REQUEST_BYTES that were read and parsed on the event loop (a pause for every stream on the replica)
before it was told 401. Now the key is checked first: a request without a valid key (or, on /admin, without the
admin key) is answered 401 before any of its body is parsed, in the error JSON of the API it called, and the
connection is closed (`Connection: close`) rather than the rest of the body read and discarded.

Each request here sends its headers only, declaring a body just under the limit: an answer proves the server did not
wait for the body; a server that reads the body first leaves the socket waiting until it times out.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from server.config.settings import Settings
from tests.server.security.conftest import ADMIN_KEY, MODEL, Plane

MAX_BYTES = Settings.model_fields["max_request_bytes"].default
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize"]
ANTHROPIC_PATHS = ["/v1/messages", "/v1/messages/count_tokens"]
# Wrong admin keys count against an address; a loopback address of these tests' own keeps 127.0.0.1's admin calls
# (and the throttle test's 127.0.0.2) unaffected.
GUESSER = "127.0.0.3"


def _headers_only(plane: Plane, path: str, headers: dict[str, str], source: str = "127.0.0.1") -> tuple[int, dict]:
    """The status and JSON body of the answer to a POST whose body is declared but never sent."""
    url = urlsplit(plane.url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
    lines += [f"Content-Length: {MAX_BYTES - 1}", *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection((url.hostname, url.port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        fields = {k.lower(): v for k, v in (line.partition(b":")[::2] for line in head.split(b"\r\n")[1:])}
        length = int(next(value for name, value in fields.items() if name.lower() == b"content-length"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed mid-answer"
            body += chunk
        assert fields.get(b"connection", b"").strip().lower() == b"close", head
        assert sock.recv(65536) == b"", "the server closes the connection after the refusal"
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize("path", OPENAI_PATHS)
@pytest.mark.parametrize("credentials", [{}, {"Authorization": "Bearer sk-not-a-key"}, {"x-api-key": "made-up"}])
def test_an_openai_request_without_a_valid_key_is_refused_unread(
    plane: Plane, path: str, credentials: dict[str, str]
) -> None:
    status, body = _headers_only(plane, path, credentials)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body


@pytest.mark.parametrize("path", ANTHROPIC_PATHS)
def test_a_messages_request_without_a_valid_key_is_refused_unread_in_anthropic_shape(plane: Plane, path: str) -> None:
    status, body = _headers_only(plane, path, {"x-api-key": "made-up", "anthropic-version": "2023-06-01"})
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error", body


def test_an_admin_request_without_the_admin_key_is_refused_unread(plane: Plane) -> None:
    status, body = _headers_only(plane, "/admin/keys", {"Authorization": "Bearer wrong"}, source=GUESSER)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body


def test_the_admin_api_refuses_two_authorization_headers(plane: Plane) -> None:
    url = urlsplit(plane.url)
    with socket.create_connection((url.hostname, url.port), timeout=10, source_address=(GUESSER, 0)) as sock:
        host = url.netloc
        sock.sendall(
            f"GET /admin/keys HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
            f"Authorization: Bearer other\r\n\r\n".encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")


def test_a_keyless_malformed_body_is_a_401_not_a_400(plane: Plane) -> None:
    r = httpx.post(f"{plane.url}/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 401, r.text


def test_a_valid_key_still_gets_its_body_checked(plane: Plane) -> None:
    key = plane.create_key()["key"]
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    r = httpx.post(f"{plane.url}/v1/chat/completions", content=b"{not json", headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    ok = plane.chat(key)
    assert ok.status_code == 200 and ok.json()["model"] == MODEL, ok.text
