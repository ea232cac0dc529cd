"""A stack's model catalogue: it reaches the pod as the server's own GGUFSTACK_MODELS, and `pulumi preview` refuses
pinned models that would not fit the replica, in one line, with the server's own arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from infra.catalogue import MIB, StackModel
from infra.config import ConfigError, parse
from server.config.models import ModelEntry
from server.config.settings import Settings
from server.engine.sizing import slots_for
from server.lifecycle.capacity import HEADROOM
from server.model_source.facts import GGUFFacts, memory_estimate
from tests.infra.harness import PROJECT, REPO, StackRun, run_program, stack_config
from tests.infra.test_config import VALID

# As `ggufstack model info` prints them for the two models of the server's tests (weights MiB, KV cache per token KiB).
SMOLLM2 = {"weightsMib": 92.1, "kvKibPerToken": 22.5}
GEMMA3 = {"weightsMib": 235.2, "kvKibPerToken": 18.0}
CATALOGUE = [
    {
        "id": "smollm2",
        "blob": "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "pin": True,
        "aliases": ["default"],
        **SMOLLM2,
    },
    {"id": "gemma3", "blob": "gemma3/gemma-3-270m-q4_k_m.gguf", "ttlSeconds": 900, "contextSize": 8192, **GEMMA3},
]
# A 7B Q4_K_M: about 4.4 GB of weights, 128 KiB of KV cache per token (32 layers, 8 KV heads of 128).
LLAMA_7B = {"weightsMib": 4460.0, "kvKibPerToken": 128.0}


def _catalogue(models: list[dict[str, Any]], **overrides: str | None) -> dict[str, str]:
    values = {**VALID, "modelBlobName": None, "models": json.dumps(models), **overrides}
    return {k: v for k, v in values.items() if v is not None}


def _error(models: list[dict[str, Any]], **overrides: str | None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(_catalogue(models, **overrides))
    message = str(info.value)
    assert "\n" not in message, "one line, so the Pulumi CLI shows it as is"
    return message


def _pinned_7b(**fields: Any) -> dict[str, Any]:
    return {"id": "llama", "blob": "llama/7b-q4_k_m.gguf", "pin": True, **LLAMA_7B, **fields}


def test_a_catalogue_replaces_the_single_model_keys() -> None:
    config = parse(_catalogue(CATALOGUE))
    assert config.model_blob_name is None
    assert [m.id for m in config.models] == ["smollm2", "gemma3"]
    assert parse(VALID).models == [], "the single-model config is unchanged"


def test_each_entry_becomes_the_servers_own_entry() -> None:
    smollm2, gemma3 = parse(_catalogue(CATALOGUE)).models
    assert smollm2.entry() == ModelEntry(
        id="smollm2", blob="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", pin=True, alias=["default"]
    )
    assert gemma3.entry() == ModelEntry(id="gemma3", blob="gemma3/gemma-3-270m-q4_k_m.gguf", ttl_s=900, n_ctx=8192)


def test_a_models_footprint_is_the_servers_estimate() -> None:
    """The stack's figure for a model is what the server charges it: memory_estimate with slots_for's default."""
    facts = GGUFFacts("llama", "SmolLM2", 134_515_008, "Q4_1", 8192, 30, 23_040, 96_576_768)
    model = StackModel(id="smollm2", blob="s.gguf", weights_mib=96_576_768 / MIB, kv_kib_per_token=23_040 / 1024)
    server = memory_estimate(facts, n_ctx=4096, n_slots=slots_for(facts.kv_bytes_per_token, 4096)).total_bytes
    assert model.need_bytes(4096) == server
    assert (
        StackModel(id="s", blob="s.gguf", slots=2, **SMOLLM2).need_bytes(4096) == round(92.1 * MIB) + 2 * 4096 * 23_040
    )


def test_pinned_models_that_fit_the_gpu_pass() -> None:
    # T4: 15,360 MiB less 20% headroom is a 12,800 MiB budget; a 7B at 4k context with 4 slots needs about 6.5 GiB.
    assert parse(_catalogue([_pinned_7b(slots=4)])).models[0].pin


def test_pinned_models_that_do_not_fit_the_gpu_fail_preview_in_one_line() -> None:
    assert _error([_pinned_7b(contextSize=32768, slots=4)]) == (
        f"{PROJECT}:models: the pinned models (llama 20,844 MiB: weights plus KV cache for their context and slots) "
        "need 20,844 MiB, more than the 12,800 MiB budget (15,360 MiB of Standard_NC4as_T4_v3's GPU less the "
        "server's 20% headroom); allowed: fewer or smaller pinned models, a smaller contextSize or slots, or a larger "
        "gpuVmSize"
    )


def test_the_same_models_fit_a_larger_gpu() -> None:
    models = [_pinned_7b(contextSize=32768, slots=4)]
    assert "more than the 12,800 MiB budget" in _error(models)
    assert parse(_catalogue(models, gpuVmSize="Standard_NC24ads_A100_v4")).models


def test_the_budget_is_the_servers_headroom_below_the_gpus_memory() -> None:
    budget = int(15_360 / HEADROOM)
    kv_kib = 1.0
    weights = budget - 4096 * 8 * kv_kib / 1024  # slots_for gives 8 slots at this KV size
    assert parse(_catalogue([_pinned_7b(weightsMib=weights, kvKibPerToken=kv_kib)])).models
    assert "more than the 12,800 MiB budget" in _error([_pinned_7b(weightsMib=weights + 1, kvKibPerToken=kv_kib)])


def test_a_set_budget_is_what_pinned_models_must_fit() -> None:
    assert "more than the 4,000 MiB budget (modelMemoryBudgetMib)" in _error(
        [_pinned_7b(slots=4)], modelMemoryBudgetMib="4000"
    )
    assert parse(_catalogue([_pinned_7b(slots=4)], modelMemoryBudgetMib="8000")).model_memory_budget_mib == 8000


def test_a_budget_beyond_the_gpus_memory_is_refused() -> None:
    assert _error(CATALOGUE, modelMemoryBudgetMib="16000") == (
        f"{PROJECT}:modelMemoryBudgetMib: 16,000 MiB is more than the 15,360 MiB of Standard_NC4as_T4_v3's GPU; "
        "allowed: 1..15360 (or leave it unset: the server takes that memory less its headroom)"
    )


def test_a_model_that_could_never_load_beside_the_pinned_ones_is_refused() -> None:
    models = [_pinned_7b(slots=4), {"id": "other", "blob": "o.gguf", **LLAMA_7B, "slots": 4}]
    message = _error(models)
    assert message.startswith(f"{PROJECT}:models[1]: other needs 6,508 MiB, but the pinned models leave 6,292 MiB")
    assert message.endswith("so it could never load; allowed: a smaller contextSize or slots for it, fewer pinned "
                            "models, or a larger gpuVmSize")  # fmt: skip


def test_models_kept_on_the_cpu_are_checked_against_the_pods_memory() -> None:
    # CPU only: the pod's memory request (serverMemoryGi) is what the server budgets.
    cpu = [_pinned_7b(slots=4, gpuLayers=0)]
    assert parse(_catalogue(cpu, serverMemoryGi="16")).models
    assert "of the pod's memory request less the server's 20% headroom" in _error(cpu, serverMemoryGi="6")
    # Beside a GPU model the budget is the GPU's, but the CPU model's memory still comes from the pod.
    mixed = [*cpu, {"id": "gpu", "blob": "g.gguf", **GEMMA3}]
    assert _error(mixed, serverMemoryGi="6").startswith(f"{PROJECT}:models: the pinned models kept on the CPU (llama")


def test_the_model_cache_must_hold_the_versions_the_server_keeps() -> None:
    models = [_pinned_7b(slots=4), {"id": "other", "blob": "o.gguf", **LLAMA_7B, "slots": 2}]
    assert parse(_catalogue(models, modelCacheSizeGi="27")).models
    assert _error(models, modelCacheSizeGi="26") == (
        f"{PROJECT}:modelCacheSizeGi: 26 GiB cannot hold the 3 versions the server keeps of each model (llama, other: "
        "26.1 GiB); allowed: at least 27 (and a gpuOsDiskSizeGb that holds it)"
    )


def test_a_pinned_model_needs_its_size() -> None:
    message = _error([{"id": "chat", "blob": "chat.gguf", "pin": True}])
    assert message.startswith(f"{PROJECT}:models[0].weightsMib: chat is pinned, and preview checks that pinned")
    assert "`ggufstack model info`" in message
    assert parse(_catalogue([{"id": "chat", "blob": "chat.gguf"}])).models, "on demand, sizes are optional"


@pytest.mark.parametrize(
    ("models", "overrides", "expected"),
    [
        ([], {}, f"{PROJECT}:modelBlobName: required unless models lists a catalogue"),
        (CATALOGUE, {"modelBlobName": "x.gguf"}, f"{PROJECT}:modelBlobName: serves one model, and models lists"),
        (CATALOGUE, {"modelAlias": "x"}, f"{PROJECT}:modelAlias: serves one model, and models lists the catalogue"),
        (
            [{"id": "a", "blob": "a.gguf"}, {"id": "b", "blob": "b.gguf", "aliases": ["a"]}],
            {},
            f"{PROJECT}:models[1]: b uses the name 'a', which already names a",
        ),
        (
            [{"id": "a", "blob": "a.gguf", "contextsize": 8192}],
            {},
            f"{PROJECT}:models[0].contextsize: unknown key (did you mean contextSize?); allowed: aliases, blob,",
        ),
        (
            [{"id": "a", "blob": "a.gguf", "contextSize": 8}],
            {},
            f"{PROJECT}:models[0].contextSize: 8: Input should be greater than or equal to 64; allowed: integers "
            "64..1048576",
        ),
        ([{"id": "a", "blob": "a.bin"}], {}, f"{PROJECT}:models[0].blob: 'a.bin' is not a GGUF blob name"),
        ([{"blob": "a.gguf"}], {}, f"{PROJECT}:models[0].id: required"),
        ([{"id": "a", "blob": "a.gguf", "aliases": ["ok", "not ok"]}], {}, f"{PROJECT}:models[0].aliases[1]: 'not ok'"),
        (
            [{"id": "a", "blob": "a.gguf", "pin": True, "ttlSeconds": 60, **GEMMA3}],
            {},
            f"{PROJECT}:models[0]: a is pinned, and a pinned model is never unloaded; allowed: pin or ttlSeconds",
        ),
        ([{"id": "a", "blob": "a.gguf", "weightsMib": 10}], {}, f"{PROJECT}:models[0]: a states one of its sizes"),
        (["a.gguf"], {}, f"{PROJECT}:models[0]: 'a.gguf' is not a model; allowed: a map with id and blob"),
    ],
)
def test_catalogue_mistakes_name_the_entry_and_key(
    models: list[dict[str, Any]], overrides: dict[str, str], expected: str
) -> None:
    assert _error(models, **overrides).startswith(expected)


def test_a_catalogue_that_is_not_a_list_is_named() -> None:
    with pytest.raises(ConfigError, match=rf"^{PROJECT}:models: .*; allowed: maps with id and blob"):
        parse({**VALID, "models": '{"id": "a"}'})


def test_the_documented_example_is_a_catalogue_that_fits() -> None:
    infra = (REPO / "docs" / "infrastructure.md").read_text()
    example = infra.split("**Several models.**")[1].split("```yaml\n")[1].split("```")[0]
    values = {key.removeprefix(f"{PROJECT}:"): value for key, value in yaml.safe_load(example).items()}
    config = parse(_catalogue(values.pop("models"), **{key: str(value) for key, value in values.items()}))
    assert [m.id for m in config.models] == ["chat", "coder"] and config.models[0].pin


def test_the_catalogue_check_runs_without_llama_cpp() -> None:
    """The Pulumi program's environment has no inference engine (it is the server's extra)."""
    code = "import sys; sys.modules['llama_cpp'] = None; import infra.config, infra.catalogue"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.fixture(scope="module")
def catalogue_stack() -> StackRun:
    config = {
        k: v for k, v in stack_config("dev").items() if k not in {f"{PROJECT}:modelBlobName", f"{PROJECT}:modelAlias"}
    }
    config[f"{PROJECT}:models"] = json.dumps(CATALOGUE)
    config[f"{PROJECT}:modelMemoryBudgetMib"] = "12000"
    return run_program("dev", config)


def _env(stack: StackRun) -> dict[str, str]:
    (deployment,) = [
        obj
        for _, obj in stack.kubernetes_objects()
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ggufstack-server"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_pod_gets_the_catalogue_as_the_servers_settings(catalogue_stack: StackRun) -> None:
    env = _env(catalogue_stack)
    entries = [model.entry() for model in catalogue_stack.cfg.models]
    account = env[Settings.env_name("blob_account_url")]
    expected = Settings.to_env(blob_account_url=account, models=entries, model_memory_budget_mib=12000)
    assert {name: env[name] for name in expected} == expected
    assert json.loads(env[Settings.env_name("models")])[0] == {
        "id": "smollm2",
        "blob": "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "pin": True,
        "alias": ["default"],
    }
    single = {Settings.env_name(f) for f in ("blob_name", "model_alias", "model_version")}
    assert not single & set(env), "the single-model settings stay unset"


def test_the_single_model_stacks_get_no_catalogue(stack: StackRun) -> None:
    env = _env(stack)
    assert Settings.env_name("models") not in env and Settings.env_name("model_memory_budget_mib") not in env


def test_opting_into_a_catalogue_changes_no_resource(catalogue_stack: StackRun, dev: StackRun) -> None:
    assert sorted(r.urn for r in catalogue_stack.registrations) == sorted(r.urn for r in dev.registrations)
