"""Threat: a key's name, owner or models carry what a terminal or a later reader acts on. They were stored as sent (any
text but NUL), and `ggufstack keys list` printed them as rich markup with their control characters: a name holding
`ESC[1A ESC[2K` erases the listing's lines above it (a key can hide itself, or another, from the operator reading it),
`ESC]8;;URL` plants a link, `[bold red]revoked[/]` dresses a live key as a revoked one. Keys are often issued by
automation from a team's request, so these fields are not only the operator's own typing. Now a control character
(C0, DEL, C1, U+2028/2029) in them is a 400, as are an empty or over-long model name, more models than a catalogue
holds, and a limit sent as `true` or `"5"`; and the command line prints every field as plain text with its control
characters escaped (names stored before the check included)."""

from __future__ import annotations

import uuid

import pytest

from tests.server.security.conftest import ADMIN_KEY, Plane
from tests.support.cli import run_cli

REFUSED = [
    ({"name": "ops\x1b[2J"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "a\u2028b"}, "name"),
    ({"name": "x", "owner": "team\x07"}, "owner"),
    ({"name": "x", "owner": "\x9b31m"}, "owner"),
    ({"name": "x", "models": [""]}, "models"),
    ({"name": "x", "models": ["m\x1b[1A"]}, "models"),
    ({"name": "x", "models": ["m" * 257]}, "models"),
    ({"name": "x", "models": [f"m{i}" for i in range(1025)]}, "models"),
    ({"name": "x", "rpm": True}, "rpm"),
    ({"name": "x", "tpm": "5"}, "tpm"),
]


@pytest.mark.parametrize(("body", "param"), REFUSED, ids=[repr(b)[:40] for b, _ in REFUSED])
def test_a_key_field_with_control_characters_or_out_of_shape_is_a_400_and_stores_nothing(
    plane: Plane, body: dict, param: str
) -> None:
    before = plane.sql("SELECT count(*) FROM api_keys")[0][0]
    with plane.admin() as admin:
        r = admin.post("/admin/keys", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param, r.text
    assert plane.sql("SELECT count(*) FROM api_keys")[0][0] == before


def test_ordinary_names_owners_and_models_are_still_accepted(plane: Plane) -> None:
    name, owner = "Équipe données — prod", "jane.doe@example.com (team: [ml])"
    created = plane.create_key(name=name, owner=owner, models=["chat-model", "other:7b"], rpm=5)
    assert created["name"] == name and created["owner"] == owner and created["models"] == ["chat-model", "other:7b"]


def test_keys_list_prints_a_stored_name_as_plain_text(plane: Plane) -> None:
    """A name stored before the check (or written to the table directly) reaches the terminal as text."""
    name = f"hide-{uuid.uuid4().hex[:6]}\x1b[1A\x1b[2K [bold red]revoked[/]"
    key_id = "key_" + uuid.uuid4().hex[:16]
    plane.sql(
        "INSERT INTO api_keys (id, name, prefix, key_hash, models) VALUES (%s, %s, 'gsk-old', %s, %s)",
        key_id,
        name,
        uuid.uuid4().bytes * 2,
        ["m\x1b]8;;http://x\x1b\\"],
    )
    listed = run_cli("keys", "list", "--url", plane.url, GGUFSTACK_ADMIN_API_KEY=ADMIN_KEY, FORCE_COLOR="1")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if key_id in line)
    assert "\x1b[1A" not in row and "\x1b[2K" not in row and "\x1b]8" not in row, repr(row)
    assert "\\x1b[1A\\x1b[2K" in row and "[bold red]revoked[/]" in row, repr(row)
