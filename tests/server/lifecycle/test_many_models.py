"""Many models behind one endpoint, through real server processes and two real models (SmolLM2 135M, Gemma 3 270M).

`roomy`: both fit; SmolLM2 is pinned (alias `small`), Gemma loads on its first request. Interleaved streams to both,
the states /v1/models shows, admin load and unload, a key limited to one model.
`tight`: a budget that holds the pinned model and one other: loading one evicts the other (never the pinned one,
never one with a stream in flight), and no request fails for it.
A blob model is watched on its own: a push to its blob swaps it while the other model serves on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import ContainerClient

from server.model_source.publish import ModelPublisher
from tests.conftest import DEMO_NO_EOS
from tests.support.azurite import Azurite
from tests.support.postgres import Postgres
from tests.support.server import ServerProcess, ready_server
from tests.support.streams import MODEL_VERSION_HEADER, StreamLoad

ADMIN_KEY = "admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def catalogue(*entries: dict) -> str:
    return json.dumps(list(entries))


def models(server: ServerProcess) -> dict[str, dict]:
    response = httpx.get(f"{server.base_url}/v1/models", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return {card["id"]: card for card in response.json()["data"]}


def metric(server: ServerProcess, sample: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chat(server: ServerProcess, model: str, *, key: str | None = None, **body: object) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **body}
    headers = {"Authorization": f"Bearer {key or ADMIN_KEY}"}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=payload, headers=headers, timeout=300)


@pytest.fixture(scope="module")
def roomy(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, demo_gguf: Path, gemma_gguf: Path
) -> Iterator[ServerProcess]:
    database = "many_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    env = {
        "GGUFSTACK_MODELS": catalogue(
            {"id": "smol", "path": str(demo_gguf), "pin": True, "alias": ["small"]},
            {"id": "gemma", "path": str(gemma_gguf), "n_ctx": 1024},
        ),
        "GGUFSTACK_N_CTX": "512",
        "GGUFSTACK_N_SLOTS": "2",
        "GGUFSTACK_MODEL_MEMORY_BUDGET_MIB": "4096",
        "GGUFSTACK_DATABASE_URL": postgres.url(database),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_KEY_CACHE_TTL_S": "0",
    }
    with ready_server(tmp_path_factory.mktemp("many-roomy"), env) as server:
        yield server


def test_the_pinned_model_is_ready_at_startup_and_the_other_loads_on_demand(roomy: ServerProcess) -> None:
    assert roomy.ready().status_code == 200
    cards = models(roomy)
    assert cards["smol"]["state"] == "loaded" and cards["smol"]["pinned"] and cards["smol"]["aliases"] == ["small"]
    assert cards["smol"]["sha256"] and cards["smol"]["memory_mib"] > 0
    assert cards["gemma"]["state"] == "unloaded" and cards["gemma"]["sha256"] is None


def test_interleaved_streams_to_both_models_all_complete(
    roomy: ServerProcess, demo_sha256: str, gemma_sha256: str
) -> None:
    smol = StreamLoad(roomy.base_url, "smol", streams=2, max_tokens=(12, 17), headers=ADMIN).start()
    gemma = StreamLoad(roomy.base_url, "gemma", streams=2, max_tokens=(12, 17), headers=ADMIN).start()
    try:
        deadline = time.monotonic() + 240
        while sum(r.complete for r in gemma.records) < 3 or sum(r.complete for r in smol.records) < 3:
            assert time.monotonic() < deadline, "the streams did not complete in time"
            time.sleep(0.5)
    finally:
        records = {"smol": smol.stop(), "gemma": gemma.stop()}
    for model, sha256 in (("smol", demo_sha256), ("gemma", gemma_sha256)):
        failed = [r for r in records[model] if not r.complete]
        assert not failed, f"{model}: {len(failed)} requests did not complete: {failed[:3]}"
        assert {(r.model, r.version) for r in records[model]} == {(model, sha256)}
    assert models(roomy)["gemma"]["state"] == "loaded"
    assert metric(roomy, 'ggufstack_model_loads_total{model="gemma",result="loaded"}') == 1, "loaded once"
    assert metric(roomy, 'ggufstack_completion_tokens_total{model="gemma"}') > 0


def test_a_request_by_alias_is_answered_by_the_model_it_names(roomy: ServerProcess, demo_sha256: str) -> None:
    response = chat(roomy, "small")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "smol" and response.headers[MODEL_VERSION_HEADER] == demo_sha256
    missing = chat(roomy, "gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_admin_unload_and_load(roomy: ServerProcess, gemma_sha256: str) -> None:
    with httpx.Client(base_url=roomy.base_url, headers=ADMIN, timeout=300) as admin:
        assert admin.post("/admin/models/gemma/unload").json()["state"] == "unloaded"
        assert models(roomy)["gemma"]["state"] == "unloaded"
        pinned = admin.post("/admin/models/smol/unload")
        assert pinned.status_code == 409 and pinned.json()["error"]["code"] == "model_pinned"
        assert admin.post("/admin/models/nope/load").status_code == 404
        loaded = admin.post("/admin/models/gemma/load")
        assert loaded.status_code == 200 and loaded.json()["state"] == "loaded"
        assert loaded.json()["sha256"] == gemma_sha256
    assert httpx.post(f"{roomy.base_url}/admin/models/gemma/unload", timeout=10).status_code == 401
    assert metric(roomy, 'ggufstack_model_evictions_total{model="gemma",reason="admin"}') == 1


def test_a_key_limited_to_one_model_gets_403_on_the_other(roomy: ServerProcess) -> None:
    with httpx.Client(base_url=roomy.base_url, headers=ADMIN, timeout=30) as admin:
        created = admin.post("/admin/keys", json={"name": "smol-only", "models": ["smol"]})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert chat(roomy, "smol", key=key).status_code == 200
    assert chat(roomy, "small", key=key).status_code == 200, "an alias resolves to the id the key names"
    refused = chat(roomy, "gemma", key=key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    # Nor does it learn what the other model is doing (its state and load times tell what other tenants use).
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(f"{roomy.base_url}/v1/models", headers=auth, timeout=10).json()["data"]
    assert [card["id"] for card in listed] == ["smol"]
    card = httpx.get(f"{roomy.base_url}/v1/models/gemma", headers=auth, timeout=10)
    assert card.status_code == 403 and card.json()["error"]["code"] == "model_not_allowed"
    unknown = chat(roomy, "no-such-model", key=key)
    assert unknown.status_code == 404 and "gemma" not in unknown.json()["error"]["message"]


def test_a_key_created_for_an_alias_names_the_models_id(roomy: ServerProcess) -> None:
    # Requests are checked against the id their model name resolves to: a key that kept the alias was refused its
    # own model.
    with httpx.Client(base_url=roomy.base_url, headers=ADMIN, timeout=30) as admin:
        created = admin.post("/admin/keys", json={"name": "by-alias", "models": ["small", "smol", "later-model"]})
    assert created.status_code == 201, created.text
    assert created.json()["models"] == ["smol", "later-model"]
    assert chat(roomy, "small", key=created.json()["key"]).status_code == 200


def test_a_key_that_may_not_use_a_model_does_not_keep_it_loaded(
    tmp_path: Path, postgres: Postgres, demo_gguf: Path
) -> None:
    # Its 403s came after a lease on the model, and each lease refreshed the model's idle clock: ttl_s never came.
    database = "many_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    env = {
        "GGUFSTACK_MODELS": catalogue(
            {"id": "pinned", "path": str(demo_gguf), "pin": True}, {"id": "idle", "path": str(demo_gguf), "ttl_s": 2}
        ),
        "GGUFSTACK_N_CTX": "512",
        "GGUFSTACK_N_SLOTS": "1",
        "GGUFSTACK_DATABASE_URL": postgres.url(database),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
    }
    with ready_server(tmp_path, env) as server:
        created = httpx.post(
            f"{server.base_url}/admin/keys", json={"name": "pinned-only", "models": ["pinned"]}, headers=ADMIN
        )
        assert created.status_code == 201, created.text
        assert chat(server, "idle").status_code == 200
        deadline = time.monotonic() + 30
        while models(server)["idle"]["state"] == "loaded":
            assert time.monotonic() < deadline, "ttl_s never came while a key that may not use the model asked for it"
            refused = chat(server, "idle", key=created.json()["key"])
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
            time.sleep(0.5)
        assert metric(server, 'ggufstack_model_evictions_total{model="idle",reason="idle"}') == 1


@pytest.fixture(scope="module")
def tight(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, demo_gguf: Path, gemma_gguf: Path
) -> Iterator[ServerProcess]:
    # Estimates at n_ctx 512 and 2 slots: SmolLM2 about 115 MiB, Gemma about 253 MiB. 400 MiB hold the pinned copy
    # of SmolLM2 and one other, never all three. The admin key (which the tests use unless they say otherwise) is not
    # held to the loads per key per minute.
    database = "tight_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    env = {
        "GGUFSTACK_DATABASE_URL": postgres.url(database),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_KEY_CACHE_TTL_S": "0",
        "GGUFSTACK_MODEL_LOADS_PER_KEY_PER_MINUTE": "3",
        "GGUFSTACK_MODELS": catalogue(
            {"id": "pinned", "path": str(demo_gguf), "pin": True},
            {"id": "smol", "path": str(demo_gguf)},
            {"id": "gemma", "path": str(gemma_gguf)},
        ),
        "GGUFSTACK_N_CTX": "512",
        "GGUFSTACK_N_SLOTS": "2",
        "GGUFSTACK_MODEL_MEMORY_BUDGET_MIB": "400",
        "GGUFSTACK_MODEL_LOAD_TIMEOUT_S": "300",
    }
    with ready_server(tmp_path_factory.mktemp("many-tight"), env) as server:
        yield server


def test_alternating_models_evict_each_other_never_the_pinned_one(tight: ServerProcess) -> None:
    for model in ("smol", "gemma", "smol", "gemma"):
        response = chat(tight, model)
        assert response.status_code == 200, response.text
        cards = models(tight)
        assert cards["pinned"]["state"] == "loaded" and cards[model]["state"] == "loaded"
        other = "gemma" if model == "smol" else "smol"
        assert cards[other]["state"] == "unloaded"
    assert metric(tight, 'ggufstack_model_evictions_total{model="smol",reason="budget"}') >= 2
    assert metric(tight, 'ggufstack_model_evictions_total{model="pinned",reason="budget"}') == 0
    assert metric(tight, "ggufstack_model_memory_budget_bytes") == 400 * 2**20


def test_a_key_alternating_models_that_do_not_fit_is_held_to_its_loads_per_minute(tight: ServerProcess) -> None:
    created = httpx.post(f"{tight.base_url}/admin/keys", json={"name": "alternates"}, headers=ADMIN, timeout=10)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    for model in ("smol", "gemma"):  # gemma loaded; smol evicted by the admin key's load
        assert chat(tight, model).status_code == 200
    order = ["smol", "gemma"]
    # smol comes back at nobody's charge (the admin key's load evicted it), then three loads of the key's own, each
    # evicting the model its previous load brought.
    for model in order + order:
        assert chat(tight, model, key=key).status_code == 200
    order = order[::-1]  # gemma is loaded now; smol is not
    refused = chat(tight, order[1], key=key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_model_loads"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert models(tight)[order[1]]["state"] == "unloaded", "refused before its load began"
    assert chat(tight, order[0], key=key).status_code == 200, "a loaded model starts no load"
    assert metric(tight, 'ggufstack_rate_limited_requests_total{limit="model_loads"}') == 1
    assert chat(tight, order[1]).status_code == 200, "the admin key is not limited"


def test_two_keys_taking_turns_with_models_that_do_not_fit_are_held_to_their_loads_per_minute(
    tight: ServerProcess,
) -> None:
    """Each key asks for its own model, which the other's load evicted last. Every load restored a model the other
    key's load had evicted, at that key's charge and checked against neither: measured before the fix, two keys
    made 7 loads each of a limit of 2 and were never refused. Now every load is its requester's, restores included
    (but of a model the admin key evicted), so the turns meet one key's limit of 3."""
    keys = {}
    for model in ("smol", "gemma"):
        created = httpx.post(f"{tight.base_url}/admin/keys", json={"name": f"turns-{model}"}, headers=ADMIN, timeout=10)
        assert created.status_code == 201, created.text
        keys[model] = created.json()["key"]
    refused_before = metric(tight, 'ggufstack_rate_limited_requests_total{limit="model_loads"}')
    statuses: list[int] = []
    for _ in range(7):  # at most 2 x 3 restores at the other's charge and 2 x 3 loads of their own, one maybe none
        for model in ("smol", "gemma"):
            statuses.append(chat(tight, model, key=keys[model]).status_code)
        if 429 in statuses:
            break
    assert statuses[-1] == 429 or statuses[-2] == 429, statuses
    assert set(statuses) == {200, 429}, statuses
    assert metric(tight, 'ggufstack_rate_limited_requests_total{limit="model_loads"}') > refused_before


def test_a_model_with_a_stream_in_flight_is_not_evicted_the_load_waits(tight: ServerProcess) -> None:
    assert chat(tight, "smol").status_code == 200  # smol resident, gemma not
    stream_lines: list[str] = []

    def long_stream() -> None:
        body = {
            "model": "smol",
            "prompt": "Once upon a time",
            "max_tokens": 300,
            "stream": True,
            "logit_bias": DEMO_NO_EOS,
        }
        with httpx.stream("POST", f"{tight.base_url}/v1/completions", json=body, headers=ADMIN, timeout=300) as r:
            stream_lines.extend(line for line in r.iter_lines() if line.startswith("data: "))

    answered: list[httpx.Response] = []
    streaming = threading.Thread(target=long_stream)
    waiting = threading.Thread(target=lambda: answered.append(chat(tight, "gemma")))
    streaming.start()
    time.sleep(1.0)  # the stream is decoding
    waiting.start()
    time.sleep(1.0)
    during, stream_running = models(tight), streaming.is_alive()
    streaming.join(300)
    waiting.join(300)
    assert stream_running, "the stream ended before the check: make it longer"
    assert during["smol"]["state"] == "loaded" and during["gemma"]["state"] == "loading", during
    errors = [line for line in stream_lines if '"error"' in line]
    assert stream_lines[-1] == "data: [DONE]" and not errors, f"{errors}\n{tight.log()[-4000:]}"
    response = answered[0]
    assert response.status_code == 200, response.text
    cards = models(tight)
    assert cards["gemma"]["state"] == "loaded" and cards["smol"]["state"] == "unloaded"


def test_a_model_kept_busy_does_not_keep_another_model_out(tight: ServerProcess) -> None:
    """Streams on smol, each begun before the others end, kept it busy: gemma's load waited for a moment with no
    generation on smol that never came, and its requests got 503 for as long as the streams went on (found by a
    review, 2026-12-08). While gemma's load waits, smol takes no new request, so its streams end and gemma loads;
    the held requests then load smol again in turn, and every request is answered."""
    assert chat(tight, "smol").status_code == 200  # smol resident, gemma not
    stop = threading.Event()
    statuses: list[int] = []

    def keep_busy() -> None:
        body = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 40, "logit_bias": DEMO_NO_EOS}
        while not stop.is_set():
            r = httpx.post(f"{tight.base_url}/v1/completions", json=body, headers=ADMIN, timeout=300)
            statuses.append(r.status_code)

    keepers = [threading.Thread(target=keep_busy) for _ in range(3)]
    for keeper in keepers:
        keeper.start()
        time.sleep(0.3)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        answered = chat(tight, "gemma")
        waited = time.monotonic() - started
    finally:
        stop.set()
        for keeper in keepers:
            keeper.join(300)
    assert answered.status_code == 200, answered.text
    assert waited < 60, f"gemma waited {waited:.0f} s for smol's streams to stop"
    assert statuses and set(statuses) == {200}, statuses


def test_concurrent_streams_on_two_models_that_do_not_fit_together_all_complete(tight: ServerProcess) -> None:
    loads = {
        m: StreamLoad(tight.base_url, m, streams=1, max_tokens=8, headers=ADMIN).start() for m in ("smol", "gemma")
    }
    try:
        deadline = time.monotonic() + 240
        while any(sum(r.complete for r in load.records) < 2 for load in loads.values()):
            assert time.monotonic() < deadline, "the streams did not complete in time"
            time.sleep(0.5)
    finally:
        records = [record for load in loads.values() for record in load.stop()]
    failed = [r for r in records if not r.complete]
    assert not failed, f"{len(failed)} of {len(records)} requests failed: {failed[:3]}"
    assert models(tight)["pinned"]["state"] == "loaded"


def test_a_push_to_one_models_blob_swaps_that_model_only(
    tmp_path: Path,
    azurite: Azurite,
    container: ContainerClient,
    demo_gguf: Path,
    demo_sha256: str,
    gemma_gguf: Path,
    gemma_sha256: str,
) -> None:
    ModelPublisher(container).push(demo_gguf, "a.gguf")
    env = {
        "GGUFSTACK_MODELS": catalogue(
            {"id": "watched", "blob": "a.gguf", "pin": True}, {"id": "steady", "path": str(demo_gguf), "pin": True}
        ),
        "GGUFSTACK_BLOB_CONNECTION_STRING": azurite.connection_string,
        "GGUFSTACK_BLOB_CONTAINER": container.container_name,
        "GGUFSTACK_MODEL_WATCH_INTERVAL_S": "0.5",
        "GGUFSTACK_MODEL_SWAP": "beside",
        "GGUFSTACK_N_CTX": "512",
        "GGUFSTACK_N_SLOTS": "2",
    }
    with ready_server(tmp_path, env) as server:
        steady = StreamLoad(server.base_url, "steady", streams=1, max_tokens=12).start()
        try:
            ModelPublisher(container).push(gemma_gguf, "a.gguf")
            deadline = time.monotonic() + 180
            while models(server)["watched"]["sha256"] != gemma_sha256:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.5)
            done = len(steady.records)
            while sum(r.complete for r in steady.records[done:]) < 2:
                assert time.monotonic() < deadline, "the other model stopped answering"
                time.sleep(0.5)
        finally:
            records = steady.stop()
        assert all(r.complete for r in records), [r.error for r in records if not r.complete][:3]
        assert {r.version for r in records} == {demo_sha256}, "the other model never swapped"
        cards = models(server)
        assert cards["steady"]["sha256"] == demo_sha256 and cards["watched"]["state"] == "loaded"
        assert chat(server, "watched").headers[MODEL_VERSION_HEADER] == gemma_sha256
