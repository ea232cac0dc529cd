"""Stack configuration: both stack files are valid and differ where they should; bad config fails in one line."""

from __future__ import annotations

import json
import re

import pulumi
import pytest
import yaml
from pydantic.fields import FieldInfo

from infra.config import CONFIG_NAMESPACE, GPU_VM_SIZES, ConfigError, StackConfig, load, parse
from tests.infra.harness import PROJECT, REPO, run_program, stack_config

VALID = {
    "location": "westeurope",
    "gpuVmSize": "Standard_NC4as_T4_v3",
    "serverImageTag": "v1.2.3",
    "modelBlobName": "qwen/qwen2.5-7b-q4_k_m.gguf",
    "serverMaxReplicas": "2",
    "production": "false",
    "clusterAdminGroupObjectId": "0b9e7c1a-3d2f-4e5a-8b6c-7d8e9f0a1b2c",
}


def _stack(stack: str) -> StackConfig:
    return parse({key.removeprefix(f"{PROJECT}:"): value for key, value in stack_config(stack).items()})


def _error(**overrides: str | None) -> str:
    values = {k: v for k, v in {**VALID, **overrides}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse(values)
    message = str(info.value)
    assert "\n" not in message, "one line, so the Pulumi CLI shows it as is"
    return message


def test_both_stack_files_are_valid() -> None:
    for stack in ("dev", "prod"):
        assert isinstance(_stack(stack), StackConfig)


def test_stack_files_use_only_the_project_namespace() -> None:
    for stack in ("dev", "prod"):
        assert all(key.startswith(f"{PROJECT}:") for key in stack_config(stack))


def test_dev_is_the_cheaper_less_private_stack() -> None:
    dev, prod = _stack("dev"), _stack("prod")
    assert dev.gpu_spot and not prod.gpu_spot
    assert dev.gpu_node_min == 0 < prod.gpu_node_min
    assert GPU_VM_SIZES[dev.gpu_vm_size].vcpus < GPU_VM_SIZES[prod.gpu_vm_size].vcpus
    assert dev.server_replicas < prod.server_replicas
    assert dev.system_node_count < prod.system_node_count
    assert (dev.private_endpoints, dev.purge_protection) == (False, False)
    assert (prod.private_endpoints, prod.purge_protection, prod.disable_local_accounts) == (True, True, True)
    assert not prod.storage_shared_key_access
    assert prod.postgres_high_availability and not dev.postgres_high_availability
    assert dev.postgres_tier == "Burstable" and prod.postgres_tier == "GeneralPurpose"


def test_config_is_frozen() -> None:
    config = parse(VALID)
    with pytest.raises(ValueError, match="frozen"):
        config.gpu_spot = True  # type: ignore[misc]


def test_the_required_keys_alone_make_a_valid_non_production_stack() -> None:
    required = {k: v for k, v in VALID.items() if StackConfig.model_fields[_field(k)].is_required()}
    assert set(required) == {"location", "gpuVmSize", "serverImageTag", "clusterAdminGroupObjectId"}
    # What to serve is required too: one model, or a catalogue (tests/infra/test_catalogue.py).
    config = parse({**required, "modelBlobName": VALID["modelBlobName"], "production": "false"})
    assert config.gpu_node_max >= config.server_max_replicas + 1


def _field(key: str) -> str:
    return next(name for name, field in StackConfig.model_fields.items() if field.alias == key)


def test_secure_defaults_apply_when_keys_are_left_out() -> None:
    config = parse(VALID)
    assert config.private_endpoints and config.purge_protection and config.disable_local_accounts
    assert not config.storage_shared_key_access and not config.gpu_spot


def test_unknown_gpu_vm_size_is_rejected_with_the_allowed_sizes() -> None:
    message = _error(gpuVmSize="Standard_XYZ")
    assert message.startswith(f"{PROJECT}:gpuVmSize: 'Standard_XYZ' is not a known GPU VM size; allowed: ")
    assert all(size in message for size in GPU_VM_SIZES)


def test_gpu_pool_min_above_max_is_rejected() -> None:
    assert _error(gpuNodeMin="4", gpuNodeMax="3") == f"{PROJECT}:gpuNodeMin: 4 exceeds gpuNodeMax; allowed: 0..3"


@pytest.mark.parametrize("key", ["location", "gpuVmSize", "serverImageTag"])
def test_missing_required_key_is_named(key: str) -> None:
    message = _error(**{key: None})
    assert message == f"{PROJECT}:{key}: required; set it with `pulumi config set {key} <value>`"


def test_every_problem_is_reported_on_the_same_line() -> None:
    message = _error(location=None, gpuSpot="maybe")
    assert f"{PROJECT}:location: required" in message
    assert f"{PROJECT}:gpuSpot: 'maybe' is not allowed; allowed: true, false" in message


def test_misspelt_key_is_rejected_with_a_suggestion() -> None:
    message = _error(gpuVMSize="Standard_NC4as_T4_v3")
    assert message.startswith(f"{PROJECT}:gpuVMSize: unknown key (did you mean gpuVmSize?); allowed: ")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"location": "West Europe"}, "ggufstack:location: 'West Europe' is not an Azure region name; allowed:"),
        ({"kubernetesVersion": "1.28"}, "ggufstack:kubernetesVersion: '1.28' is not a supported Kubernetes version"),
        ({"serverImageTag": "latest"}, "ggufstack:serverImageTag: 'latest' is not a pinned image tag"),
        ({"modelBlobName": "model.bin"}, "ggufstack:modelBlobName: 'model.bin' is not a GGUF blob name"),
        ({"vnetCidr": "10.244.0.0/16"}, "ggufstack:vnetCidr: '10.244.0.0/16' cannot host the cluster"),
        ({"availabilityZones": "1,2"}, "ggufstack:availabilityZones: '1,2' is not a list; allowed: a YAML list"),
        ({"availabilityZones": '["4"]'}, "ggufstack:availabilityZones: '4' is not allowed; allowed: 1, 2, 3"),
        ({"postgresStorageGb": "100"}, "ggufstack:postgresStorageGb: 100 is not allowed; allowed: 32, 64, 128"),
        ({"redisSku": "Enterprise_E10"}, "ggufstack:redisSku: 'Enterprise_E10' is not allowed; allowed: Balanced_B0"),
        ({"systemNodeCount": "0"}, "ggufstack:systemNodeCount: '0': Input should be greater than or equal to 2"),
        ({"serverReplicas": "3"}, "ggufstack:serverReplicas: 3 exceeds serverMaxReplicas; allowed: 1..2"),
        ({"gpuNodeMax": "2"}, "ggufstack:gpuNodeMax: 2 node(s) of 1 GPU(s) cannot hold serverMaxReplicas plus a"),
        (
            {"serverMemoryGi": "26"},
            "ggufstack:serverMemoryGi: 26 GiB does not fit: after AKS's reservations and the node's DaemonSets, "
            "Standard_NC4as_T4_v3 leaves each GPU's replica 25874Mi; allowed: 1..25",
        ),
        (
            {"serverCpu": "3"},
            "ggufstack:serverCpu: 3 cores do not fit: after AKS's reservations and the node's DaemonSets, "
            "Standard_NC4as_T4_v3 leaves each GPU's replica 2860m; allowed: 1..2 (or leave it unset to request 2800m)",
        ),
        (
            {"ingressHostName": "api.example.com", "ingressExposure": "public"},
            "ggufstack:ingressSourceRanges: a public ingress needs the client ranges it admits",
        ),
        ({"ingressHostName": "API_example"}, "ggufstack:ingressHostName: 'API_example' is not a host name"),
        (
            {"location": "italynorth", "postgresGeoRedundantBackup": "true"},
            "ggufstack:postgresGeoRedundantBackup: italynorth has no paired region to keep backups in",
        ),
        (
            {"apiServerAccess": "private", "vnetCidr": "10.40.0.0/22"},
            "ggufstack:vnetCidr: 10.40.0.0/22 has no room for the API server's subnet",
        ),
        ({"maintenanceDurationHours": "2"}, "ggufstack:maintenanceDurationHours: '2': Input should be greater"),
        (
            {"postgresSku": "Standard_B2s", "postgresHighAvailability": "true"},
            "ggufstack:postgresHighAvailability: Burstable servers have no HA",
        ),
        ({"aksAdminGroupObjectIds": '["admins"]'}, "ggufstack:aksAdminGroupObjectIds: 'admins' is not an object id"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(overrides: dict[str, str], expected: str) -> None:
    assert _error(**overrides).startswith(expected)


def test_base_name_is_a_short_dns_label() -> None:
    config = parse(VALID)
    assert config.base_name("dev") == "gguf-dev"
    assert config.base_name("Feature_Branch.42-with-a-very-long-name") == "gguf-feature-branch-42-w"


def test_config_error_is_a_run_error_so_the_cli_prints_only_the_message() -> None:
    assert issubclass(ConfigError, pulumi.RunError)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("gpuVmSize", "Standard_XYZ", r"^ggufstack:gpuVmSize: 'Standard_XYZ' is not a known GPU VM size"),
        ("gpuVMSize", "Standard_NC4as_T4_v3", r"^ggufstack:gpuVMSize: unknown key \(did you mean gpuVmSize\?\)"),
    ],
)
def test_the_program_stops_on_bad_config(key: str, value: str, expected: str) -> None:
    config = {**stack_config("dev"), f"{PROJECT}:{key}": value}
    with pytest.raises(ConfigError, match=expected):
        run_program("dev", config)


def test_config_is_read_from_the_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `pulumi up` the language host passes config as JSON in PULUMI_CONFIG; other namespaces are ignored.
    namespaced = {f"{PROJECT}:{key}": value for key, value in VALID.items()}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**namespaced, "azure-native:location": "westeurope"}))
    assert load() == parse(VALID)


def _documented_keys() -> dict[str, list[str]]:
    """The configuration table of docs/infrastructure.md: key -> [type, default, allowed, dev, prod]."""
    infra = (REPO / "docs" / "infrastructure.md").read_text()
    section = infra.split("\n## Configuration\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _documented_default(cell: str) -> str | None:
    if cell == "**required**":
        return "required"
    match = re.match(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def test_every_config_key_is_documented_with_its_default() -> None:
    documented = _documented_keys()
    fields = {field.alias: field for field in StackConfig.model_fields.values()}
    assert set(documented) == set(fields)
    for key, field in fields.items():
        assert _documented_default(documented[key][1]) == _shown(field), key


def _shown(field: FieldInfo) -> str | None:
    """A field's default as the docs write it."""
    if field.is_required():
        return "required"
    if field.default is None:
        return None
    if isinstance(field.default, bool):
        return str(field.default).lower()
    return str(field.default)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_documented_stack_values_are_the_stack_files(stack: str) -> None:
    column = {"dev": 3, "prod": 4}[stack]
    values = {key.removeprefix(f"{PROJECT}:"): value for key, value in stack_config(stack).items()}
    for key, cells in _documented_keys().items():
        cell = cells[column]
        if cell == "-":
            assert key not in values, f"{key} is set in Pulumi.{stack}.yaml"
        elif cell.startswith("["):
            assert json.loads(values[key]) == [item.strip() for item in cell.strip("[]").split(",")], key
        else:
            assert values[key] == cell, key


def test_project_file_runs_the_program_with_uv_under_the_config_namespace() -> None:
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == CONFIG_NAMESPACE == PROJECT
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "uv"}}
    assert project["main"] == "stacks/"
    assert (REPO / project["main"] / "__main__.py").is_file()


PRODUCTION = {**VALID, "production": "true", "clusterAdminGroupObjectId": "5f6c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "ggufstack:apiServerAuthorizedIpRanges: required in production while apiServerAccess is public"),
        (
            {"apiServerAccess": "vnetIntegration"},
            "ggufstack:apiServerAuthorizedIpRanges: required in production while apiServerAccess is vnetIntegration",
        ),
        (
            {"apiServerAccess": "private", "dataPlaneAuth": "password"},
            "ggufstack:dataPlaneAuth: production allows no passwords or access keys; allowed: entra",
        ),
        (
            {"apiServerAccess": "private", "disableLocalAccounts": "false"},
            "ggufstack:disableLocalAccounts: production allows no static cluster credentials; allowed: true",
        ),
    ],
)
def test_production_needs_named_admins_a_narrowed_api_server_and_no_passwords(
    overrides: dict[str, str | None], expected: str
) -> None:
    values = {k: v for k, v in {**PRODUCTION, **overrides}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse(values)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "access",
    [
        {"apiServerAccess": "private"},
        {"apiServerAuthorizedIpRanges": '["203.0.113.0/24"]'},
        {"apiServerAccess": "vnetIntegration", "apiServerAuthorizedIpRanges": '["203.0.113.0/24"]'},
    ],
)
def test_production_api_server_is_private_or_narrowed_by_ranges(access: dict[str, str]) -> None:
    """ "API Server VNet Integration" (https://learn.microsoft.com/azure/aks/api-server-vnet-integration): a
    VNet-integrated API server keeps its public endpoint unless the cluster is private, so production needs
    authorized IP ranges with it too; prod's API server was open to the Internet (Entra ID auth only)."""
    assert parse({**PRODUCTION, **access}).production


def test_every_stack_names_its_cluster_admin_group() -> None:
    """Without a group the cluster admin role went to whoever ran `pulumi up`, and moved with every run (dev)."""
    assert "ggufstack:clusterAdminGroupObjectId: required" in _error(clusterAdminGroupObjectId=None)
    assert _stack("dev").cluster_admin_group_object_id and _stack("prod").cluster_admin_group_object_id


def test_prod_stack_is_production_and_dev_is_not() -> None:
    dev, prod = _stack("dev"), _stack("prod")
    assert prod.production and not dev.production
    assert prod.cluster_admin_group_object_id is not None
    assert dev.disable_local_accounts and prod.disable_local_accounts, "local accounts are off in dev too"
    assert prod.data_plane_auth == dev.data_plane_auth == "entra"
    assert prod.postgres_geo_redundant_backup and not dev.postgres_geo_redundant_backup
    assert prod.ingress_exposure == "internal" and dev.ingress_exposure == "public" and dev.ingress_source_ranges


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"systemVmSize": "Standard_D2ds_v5"}, "ggufstack:systemVmSize: 'Standard_D2ds_v5' cannot be a system node"),
        ({"systemVmSize": "Standard_B4ms"}, "ggufstack:systemVmSize: 'Standard_B4ms' cannot be a system node"),
        ({"systemNodeCount": "1"}, "ggufstack:systemNodeCount: '1': Input should be greater than or equal to 2"),
    ],
)
def test_system_pool_meets_aks_minimum_for_system_node_pools(overrides: dict[str, str], expected: str) -> None:
    """ "Manage system node pools in Azure Kubernetes Service (AKS)", System and user node pools
    (https://learn.microsoft.com/azure/aks/use-system-pools): at least 4 vCPUs a node, no B series, at least two
    nodes. The system pool now also runs the app routing add-on's istiod and the gateway's proxies; dev had one
    2-vCPU node."""
    assert expected in _error(**overrides)
