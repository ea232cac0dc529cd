"""The stack configuration: every `ggufstack:*` key, read once into one frozen, validated object.

A missing or invalid key fails the program with a single line that names the key and what it accepts, before any
resource is declared, so a typo in `Pulumi.<stack>.yaml` never turns into a half-applied deployment.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

NAMESPACE = "ggufstack"

# Overlay networking gives pods and services addresses outside the VNet; the VNet must not overlap them.
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.0.0.0/16"
DNS_SERVICE_IP = "10.0.0.10"


@dataclass(frozen=True)
class GpuVmSize:
    gpus: int
    vcpus: int
    memory_gib: int


# GPU sizes AKS supports with its managed NVIDIA driver. Partial-GPU (NVv5/A10) sizes need GRID drivers and the
# retired NCv3 sizes can no longer be created, so neither is offered.
GPU_VM_SIZES: Mapping[str, GpuVmSize] = {
    "Standard_NC4as_T4_v3": GpuVmSize(1, 4, 28),
    "Standard_NC8as_T4_v3": GpuVmSize(1, 8, 56),
    "Standard_NC16as_T4_v3": GpuVmSize(1, 16, 110),
    "Standard_NC64as_T4_v3": GpuVmSize(4, 64, 440),
    "Standard_NC24ads_A100_v4": GpuVmSize(1, 24, 220),
    "Standard_NC48ads_A100_v4": GpuVmSize(2, 48, 440),
    "Standard_NC96ads_A100_v4": GpuVmSize(4, 96, 880),
    "Standard_NC40ads_H100_v5": GpuVmSize(1, 40, 320),
    "Standard_NC80adis_H100_v5": GpuVmSize(2, 80, 640),
    "Standard_ND96asr_v4": GpuVmSize(8, 96, 900),
    "Standard_ND96amsr_A100_v4": GpuVmSize(8, 96, 1900),
    "Standard_ND96isr_H100_v5": GpuVmSize(8, 96, 1900),
}

AZURE_REGIONS = frozenset(
    {
        "australiacentral", "australiaeast", "australiasoutheast", "austriaeast", "belgiumcentral", "brazilsouth",
        "canadacentral", "canadaeast", "centralindia", "centralus", "chilecentral", "eastasia", "eastus", "eastus2",
        "francecentral", "germanywestcentral", "indonesiacentral", "israelcentral", "italynorth", "japaneast",
        "japanwest", "koreacentral", "koreasouth", "malaysiawest", "mexicocentral", "newzealandnorth",
        "northcentralus", "northeurope", "norwayeast", "polandcentral", "qatarcentral", "southafricanorth",
        "southcentralus", "southeastasia", "southindia", "spaincentral", "swedencentral", "switzerlandnorth",
        "uaenorth", "uksouth", "ukwest", "westcentralus", "westeurope", "westus", "westus2", "westus3",
    }
)  # fmt: skip

# Kubernetes minors AKS can run that kubernetes-validate also has schemas for.
KUBERNETES_MINORS = range(31, 38)

RedisSku = Literal[
    "Balanced_B0", "Balanced_B1", "Balanced_B3", "Balanced_B5", "Balanced_B10", "Balanced_B20", "Balanced_B50",
    "Balanced_B100", "MemoryOptimized_M10", "MemoryOptimized_M20", "MemoryOptimized_M50", "MemoryOptimized_M100",
    "ComputeOptimized_X3", "ComputeOptimized_X5", "ComputeOptimized_X10", "ComputeOptimized_X20",
]  # fmt: skip
PostgresStorageGb = Literal[32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


class ConfigError(pulumi.RunError):
    """Invalid stack configuration; the message is one line naming each offending key and what it accepts.

    A RunError, so the Pulumi CLI prints the message alone rather than a Python traceback.
    """


def _location(value: str) -> str:
    if value not in AZURE_REGIONS:
        raise ValueError(
            f"{value!r} is not an Azure region name; allowed: lower-case names such as westeurope, eastus2"
        )
    return value


def _gpu_vm_size(value: str) -> str:
    if value not in GPU_VM_SIZES:
        raise ValueError(f"{value!r} is not a known GPU VM size; allowed: {', '.join(GPU_VM_SIZES)}")
    return value


def _kubernetes_version(value: str) -> str:
    match = re.fullmatch(r"1\.(\d+)(\.\d+)?", value)
    if not match or int(match.group(1)) not in KUBERNETES_MINORS:
        allowed = f"1.{KUBERNETES_MINORS[0]} to 1.{KUBERNETES_MINORS[-1]}, optionally with a patch (e.g. 1.33.2)"
        raise ValueError(f"{value!r} is not a supported Kubernetes version; allowed: {allowed}")
    return value


def _image_tag(value: str) -> str:
    if value == "latest" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError(f"{value!r} is not a pinned image tag; allowed: a Docker tag other than 'latest'")
    return value


def _blob_name(value: str) -> str:
    if not value.endswith(".gguf") or value.startswith("/") or len(value) > 1024:
        raise ValueError(f"{value!r} is not a GGUF blob name; allowed: a blob path ending in .gguf (e.g. qwen/q4.gguf)")
    return value


def _vnet_cidr(value: str) -> str:
    allowed = f"a private IPv4 /16 to /22 that does not overlap {POD_CIDR} (pods) or {SERVICE_CIDR} (services)"
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network; allowed: {allowed}") from None
    reserved = (ipaddress.IPv4Network(POD_CIDR), ipaddress.IPv4Network(SERVICE_CIDR))
    if not network.is_private or not 16 <= network.prefixlen <= 22 or any(network.overlaps(r) for r in reserved):
        raise ValueError(f"{value!r} cannot host the cluster; allowed: {allowed}")
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.IPv4Network(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 CIDR; allowed: networks such as 203.0.113.0/24") from None
    return value


def _object_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value):
        raise ValueError(f"{value!r} is not an object id; allowed: GUIDs")
    return value


def _namespace_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise ValueError(f"{value!r} is not a namespace name; allowed: DNS labels")
    return value


Location = Annotated[str, AfterValidator(_location)]
VmSize = Annotated[str, Field(pattern=r"^Standard_[A-Za-z0-9_]+$")]


class StackConfig(BaseModel):
    """Everything a stack can vary. Field names are the Pulumi keys in snake_case (`gpuVmSize` -> `gpu_vm_size`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, validate_by_name=True)

    # Required: there is no sensible default for where to deploy, which GPU to pay for, or what to serve.
    location: Location
    gpu_vm_size: Annotated[str, AfterValidator(_gpu_vm_size)]
    server_image_tag: Annotated[str, AfterValidator(_image_tag)]
    model_blob_name: Annotated[str, AfterValidator(_blob_name)]

    name_prefix: str = Field("gguf", pattern=r"^[a-z][a-z0-9]{1,9}$")
    kubernetes_version: Annotated[str, AfterValidator(_kubernetes_version)] = "1.33"
    cluster_tier: Literal["Free", "Standard", "Premium"] = "Standard"
    availability_zones: list[Literal["1", "2", "3"]] = []
    system_vm_size: VmSize = "Standard_D4ds_v5"
    system_node_count: int = Field(3, ge=1, le=10)
    gpu_node_min: int = Field(2, ge=0, le=100)
    gpu_node_max: int = Field(4, ge=1, le=100)
    gpu_spot: bool = False
    gpu_os_disk_size_gb: int = Field(256, ge=128, le=2048)
    disable_local_accounts: bool = True
    aks_admin_group_object_ids: list[Annotated[str, AfterValidator(_object_id)]] = []
    api_server_authorized_ip_ranges: list[Annotated[str, AfterValidator(_cidr)]] = []
    vnet_cidr: Annotated[str, AfterValidator(_vnet_cidr)] = "10.40.0.0/16"

    private_endpoints: bool = True
    purge_protection: bool = True
    storage_sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_GZRS"] = "Standard_ZRS"
    storage_shared_key_access: bool = False
    postgres_sku: str = Field("Standard_D2ds_v5", pattern=r"^Standard_(B|D|E)\d+[a-z]*(_v\d)?$")
    postgres_version: Literal["14", "15", "16", "17"] = "16"
    postgres_storage_gb: PostgresStorageGb = 32
    postgres_high_availability: bool = False
    postgres_backup_retention_days: int = Field(35, ge=7, le=35)
    redis_sku: RedisSku = "Balanced_B1"
    log_retention_days: int = Field(30, ge=30, le=730)

    server_replicas: int = Field(2, ge=1, le=50)
    server_max_replicas: int = Field(3, ge=1, le=50)
    server_cpu: int = Field(3, ge=1, le=96)
    server_memory_gi: int = Field(16, ge=1, le=1900)
    model_cache_size_gi: int = Field(64, ge=1, le=1024)
    model_download_timeout_minutes: int = Field(30, ge=5, le=240)
    model_alias: str | None = Field(None, min_length=1, max_length=128)
    context_size: int = Field(4096, ge=64, le=1_048_576)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ingress_namespaces: list[Annotated[str, AfterValidator(_namespace_name)]] = []

    @field_validator("postgres_storage_gb", mode="before")
    @classmethod
    def _storage_as_int(cls, value: Any) -> Any:
        # Pulumi hands every value over as a string; Literal ints do not coerce on their own.
        return int(value) if isinstance(value, str) and value.isdigit() else value

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        size = self.gpu
        if self.gpu_node_min > self.gpu_node_max:
            raise _problem("gpuNodeMin", f"{self.gpu_node_min} exceeds gpuNodeMax", f"0..{self.gpu_node_max}")
        if self.server_replicas > self.server_max_replicas:
            raise _problem(
                "serverReplicas", f"{self.server_replicas} exceeds serverMaxReplicas", f"1..{self.server_max_replicas}"
            )
        # A rolling update with maxUnavailable 0 needs room for one pod more than the autoscaler's maximum.
        needed_nodes = -(-(self.server_max_replicas + 1) // size.gpus)
        if self.gpu_node_max < needed_nodes:
            raise _problem(
                "gpuNodeMax",
                f"{self.gpu_node_max} node(s) of {size.gpus} GPU(s) cannot hold serverMaxReplicas plus a surge pod",
                f"at least {needed_nodes}",
            )
        # A node runs one replica per GPU; they share the VM with the kubelet's reservations and the daemonsets.
        max_cpu = (size.vcpus - 1) // size.gpus
        if self.server_cpu > max_cpu:
            raise _problem("serverCpu", f"{self.server_cpu} cores do not fit {self.gpu_vm_size}", f"1..{max_cpu}")
        max_memory = int(size.memory_gib * 0.75) // size.gpus
        if self.server_memory_gi > max_memory:
            raise _problem(
                "serverMemoryGi", f"{self.server_memory_gi} GiB does not fit {self.gpu_vm_size}", f"1..{max_memory}"
            )
        if self.postgres_high_availability and self.postgres_tier == "Burstable":
            raise _problem("postgresHighAvailability", "Burstable servers have no HA", "false with a Standard_B sku")
        return self

    def base_name(self, stack: str) -> str:
        """The stem of every resource name: the prefix and the stack, as a DNS-safe label of at most 24 characters."""
        return f"{self.name_prefix}-{re.sub(r'[^a-z0-9]+', '-', stack.lower()).strip('-')}"[:24].rstrip("-")

    @property
    def gpu(self) -> GpuVmSize:
        return GPU_VM_SIZES[self.gpu_vm_size]

    @property
    def postgres_tier(self) -> str:
        return {"B": "Burstable", "D": "GeneralPurpose", "E": "MemoryOptimized"}[self.postgres_sku[len("Standard_")]]


def _problem(key: str, problem: str, allowed: str) -> ValueError:
    """A cross-field problem, attributed to the key a user should change."""
    return ValueError(f"{NAMESPACE}:{key}: {problem}; allowed: {allowed}")


_LIST_KEYS = frozenset(
    field.alias for field in StackConfig.model_fields.values() if getattr(field.annotation, "__origin__", None) is list
)


def parse(values: Mapping[str, str]) -> StackConfig:
    """Validate raw Pulumi config strings (keys without the namespace) into a StackConfig, or raise ConfigError."""
    known = {field.alias for field in StackConfig.model_fields.values()}
    unknown = sorted(set(values) - known)
    problems = [
        f"{NAMESPACE}:{key}: unknown key{_did_you_mean(key, known)}; allowed: {_names(known)}" for key in unknown
    ]
    data: dict[str, Any] = {}
    for key, raw in values.items():
        if key in _LIST_KEYS:
            try:
                data[key] = json.loads(raw)
            except json.JSONDecodeError:
                problems.append(f"{NAMESPACE}:{key}: {raw!r} is not a list; allowed: a YAML list")
        elif key in known:
            data[key] = raw
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:
            # Cross-field problems already name their key (see _problem).
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        key = str(error["loc"][0])
        if error["type"] == "missing":
            lines.append(f"{NAMESPACE}:{key}: required; set it with `pulumi config set {key} <value>`")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if "allowed:" not in message:
            given = error.get("input")
            if error["type"] in ("literal_error", "bool_parsing"):
                message = f"{given!r} is not allowed"
            elif isinstance(given, str | int | float):
                message = f"{given!r}: {message}"
            message = f"{message}; allowed: {_allowed(key)}"
        lines.append(f"{NAMESPACE}:{key}: {message}")
    return "; ".join(lines)


def _names(keys: set[str]) -> str:
    return ", ".join(sorted(keys))


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _allowed(key: str) -> str:
    schema = StackConfig.model_json_schema(by_alias=True)["properties"][key]
    schema = schema["items"] if key in _LIST_KEYS else schema
    # Optional keys are `anyOf: [<type>, null]`; what is allowed is the non-null branch.
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if "enum" in schema:
        return ", ".join(str(v) for v in schema["enum"])
    if schema.get("type") == "boolean":
        return "true, false"
    if schema.get("type") == "integer":
        return f"integers {schema.get('minimum', '')}..{schema.get('maximum', '')}"
    if "pattern" in schema:
        return f"values matching {schema['pattern']}"
    return f"strings of {schema.get('minLength', 1)}..{schema.get('maxLength', '')} characters"


def load() -> StackConfig:
    """Read the `ggufstack:*` keys of the current stack."""
    prefix = f"{NAMESPACE}:"
    values = {key.removeprefix(prefix): str(value) for key, value in _all_config().items() if key.startswith(prefix)}
    return parse(values)


def _all_config() -> dict[str, Any]:
    # pulumi.Config can only look keys up, not list them, and listing is what catches a misspelt key. Under the CLI
    # the language host passes config in PULUMI_CONFIG; under mocks and the Automation API it is set in-process.
    return {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
