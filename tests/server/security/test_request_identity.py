"""Threat: a client picks its own `X-Request-Id`. If that id were the request's identity, a constant id would count
as one request against RPM/TPM (the limiter's entries are keyed by it) and write one audit row (the rest dropped as
duplicates), and another tenant's guessed id would drop their row. The server's own id is the identity; the
client's is only traced: echoed back, kept in its own audit column and on the access line."""

from __future__ import annotations

import json
import uuid

from tests.server.security.conftest import Plane, eventually


def test_a_repeated_request_id_neither_escapes_the_rpm_limit_nor_merges_audit_rows(plane: Plane) -> None:
    created = plane.create_key(rpm=3)
    same = {"X-Request-Id": "same-id-" + uuid.uuid4().hex[:8]}
    responses = [plane.chat(created["key"], headers=same) for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 3 + [429] * 5
    assert {r.headers["x-request-id"] for r in responses} == {same["X-Request-Id"]}, "echoed back as sent"

    usage = eventually(lambda: (u := plane.usage(created["id"]))["requests"] == 8 and u)
    assert usage["requests"] == 8, "every request has its audit row"
    rows = plane.sql(
        "SELECT request_id, client_request_id, status FROM audit_log WHERE key_id = %s ORDER BY id", created["id"]
    )
    assert len({r[0] for r in rows}) == 8 and {r[1] for r in rows} == {same["X-Request-Id"]}
    assert sorted(r[2] for r in rows) == [200] * 3 + [429] * 5


def test_another_tenants_request_id_does_not_drop_their_audit_row(plane: Plane) -> None:
    victim, attacker = plane.create_key(), plane.create_key()
    guessed = {"X-Request-Id": "req-" + uuid.uuid4().hex}
    assert plane.chat(attacker["key"], headers=guessed).status_code == 200
    assert plane.chat(victim["key"], headers=guessed).status_code == 200
    assert eventually(lambda: plane.usage(victim["id"])["requests"] == 1)


def test_an_unacceptable_request_id_is_replaced_and_the_client_id_reaches_the_access_line(plane: Plane) -> None:
    key = plane.create_key()["key"]
    bad = plane.chat(key, headers={"X-Request-Id": "x" * 129})
    assert bad.status_code == 200 and len(bad.headers["x-request-id"]) == 32, "a fresh server id, not the header"
    client_id = "trace-" + uuid.uuid4().hex
    assert plane.chat(key, headers={"X-Request-Id": client_id}).status_code == 200

    def access_line() -> dict | None:
        for line in plane.server.log().splitlines():
            if client_id in line and line.startswith("{"):
                entry = json.loads(line)
                if entry.get("logger") == "server.access":
                    return entry
        return None

    entry = eventually(access_line)
    assert entry["client_request_id"] == client_id and entry["request_id"] != client_id
