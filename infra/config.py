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
from datetime import date
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from infra import aks_versions
from infra.catalogue import VERSION_PATTERN, StackModel, blob_name, cache_problem, fit_problem, names_problem
from infra.sizing import GPU_VM_SIZES, GpuVmSize, ReplicaShare, replica_share

# The Pulumi config namespace of every key (`ggufstack:location`): the project name in Pulumi.yaml.
CONFIG_NAMESPACE = "ggufstack"

# Overlay networking gives pods and services addresses outside the VNet; the VNet must not overlap them.
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.0.0.0/16"
DNS_SERVICE_IP = "10.0.0.10"


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

# Regions without a paired region, where PostgreSQL cannot keep geo-redundant backups.
UNPAIRED_REGIONS = frozenset(
    {
        "austriaeast", "belgiumcentral", "chilecentral", "indonesiacentral", "israelcentral", "italynorth",
        "malaysiawest", "mexicocentral", "newzealandnorth", "polandcentral", "qatarcentral", "spaincentral",
    }
)  # fmt: skip

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
    today = date.today()
    minors = [m.version for m in aks_versions.supported(today)]
    if not re.fullmatch(r"1\.\d+(\.\d+)?", value) or aks_versions.minor_of(value) not in minors:
        allowed = f"{', '.join(minors)} (AKS's supported minors on {today}), optionally with a patch (e.g. 1.36.2)"
        raise ValueError(f"{value!r} is not a supported Kubernetes version; allowed: {allowed}")
    return value


def _system_vm_size(value: str) -> str:
    match = re.fullmatch(r"Standard_([A-Z]+)(\d+)[a-z]*(_v\d+)?", value)
    if not match or match.group(1).startswith("B") or int(match.group(2)) < 4:
        raise ValueError(
            f"{value!r} cannot be a system node; allowed: a VM size of 4 vCPUs or more, not B series "
            "(e.g. Standard_D4ds_v5)"
        )
    return value


def _image_tag(value: str) -> str:
    if value == "latest" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError(f"{value!r} is not a pinned image tag; allowed: a Docker tag other than 'latest'")
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


def _host_name(value: str) -> str:
    label = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
    if len(value) > 253 or not re.fullmatch(rf"{label}(\.{label})+", value):
        raise ValueError(f"{value!r} is not a host name; allowed: lower-case DNS names such as api.example.com")
    return value


Weekday = Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
Location = Annotated[str, AfterValidator(_location)]


class StackConfig(BaseModel):
    """Everything a stack can vary. Field names are the Pulumi keys in snake_case (`gpuVmSize` -> `gpu_vm_size`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, validate_by_name=True)

    # Required: there is no sensible default for where to deploy, which GPU to pay for, or what to serve (one model,
    # or a catalogue of them in `models`).
    location: Location
    gpu_vm_size: Annotated[str, AfterValidator(_gpu_vm_size)]
    server_image_tag: Annotated[str, AfterValidator(_image_tag)]
    model_blob_name: Annotated[str, AfterValidator(blob_name)] | None = None

    name_prefix: str = Field("gguf", pattern=r"^[a-z][a-z0-9]{1,9}$")
    # A production stack must name its admins and narrow its API server, and may not use passwords or keys.
    production: bool = True
    kubernetes_version: Annotated[str, AfterValidator(_kubernetes_version)] = aks_versions.DEFAULT
    cluster_tier: Literal["Free", "Standard", "Premium"] = "Standard"
    availability_zones: list[Literal["1", "2", "3"]] = []
    # "Manage system node pools in AKS": at least 4 vCPUs a node (no B series) and at least two nodes; the system
    # pool also runs the gateway's proxies (infra/ingress.py).
    system_vm_size: Annotated[str, AfterValidator(_system_vm_size)] = "Standard_D4ds_v5"
    system_node_count: int = Field(3, ge=2, le=10)
    gpu_node_min: int = Field(2, ge=0, le=100)
    gpu_node_max: int = Field(4, ge=1, le=100)
    gpu_spot: bool = False
    gpu_os_disk_size_gb: int = Field(256, ge=128, le=2048)
    gpu_availability_zones: list[Literal["1", "2", "3"]] = []
    gpu_max_surge: str = Field("1", pattern=r"^([1-9][0-9]?|[1-9][0-9]?%|100%)$")
    maintenance_day: Weekday = "Saturday"
    maintenance_start_hour: int = Field(2, ge=0, le=23)
    maintenance_duration_hours: int = Field(4, ge=4, le=24)
    maintenance_utc_offset: str = Field("+00:00", pattern=r"^[+-](0\d|1[0-4]):(00|30|45)$")
    disable_local_accounts: bool = True
    # Required in every stack: with the caller instead, whoever ran `pulumi up` last would be the cluster's admin.
    cluster_admin_group_object_id: Annotated[str, AfterValidator(_object_id)]
    aks_admin_group_object_ids: list[Annotated[str, AfterValidator(_object_id)]] = []
    api_server_access: Literal["public", "vnetIntegration", "private"] = "public"
    api_server_authorized_ip_ranges: list[Annotated[str, AfterValidator(_cidr)]] = []
    vnet_cidr: Annotated[str, AfterValidator(_vnet_cidr)] = "10.40.0.0/16"

    private_endpoints: bool = True
    purge_protection: bool = True
    storage_sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_GZRS"] = "Standard_ZRS"
    storage_shared_key_access: bool = False
    data_plane_auth: Literal["password", "entra"] = "entra"
    postgres_sku: str = Field("Standard_D2ds_v5", pattern=r"^Standard_(B|D|E)\d+[a-z]*(_v\d)?$")
    postgres_version: Literal["14", "15", "16", "17"] = "16"
    postgres_storage_gb: PostgresStorageGb = 32
    postgres_high_availability: bool = False
    postgres_backup_retention_days: int = Field(35, ge=7, le=35)
    postgres_geo_redundant_backup: bool = True
    redis_sku: RedisSku = "Balanced_B1"
    log_retention_days: int = Field(30, ge=30, le=730)
    # The server's own retention of audit rows and stored conversations; unset: the server's defaults (90 and 30).
    audit_retention_days: int | None = Field(None, ge=0, le=36_500)
    conversations_retention_days: int | None = Field(None, ge=0, le=36_500)
    alert_email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

    server_replicas: int = Field(2, ge=1, le=50)
    server_max_replicas: int = Field(3, ge=1, le=50)
    server_cpu: int | None = Field(None, ge=1, le=96)
    server_memory_gi: int | None = Field(None, ge=1, le=1900)
    model_cache_size_gi: int = Field(64, ge=1, le=1024)
    model_download_timeout_minutes: int = Field(30, ge=5, le=240)
    model_alias: str | None = Field(None, min_length=1, max_length=128)
    model_watch_interval_s: int = Field(30, ge=0, le=3600)
    model_version: str | None = Field(None, pattern=VERSION_PATTERN)
    # Several models behind one endpoint (infra/catalogue.py), instead of modelBlobName.
    models: list[StackModel] = []
    model_memory_budget_mib: int | None = Field(None, ge=1, le=2_000_000)
    context_size: int = Field(4096, ge=64, le=1_048_576)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    scale_waiting_per_replica: int = Field(4, ge=1, le=1000)
    # The first `pulumi up` of a stack: do not wait for the server's rollout (docs/infrastructure.md, "First up").
    skip_rollout_await: bool = False

    ingress_host_name: Annotated[str, AfterValidator(_host_name)] | None = None
    ingress_exposure: Literal["internal", "public"] = "internal"
    ingress_source_ranges: list[Annotated[str, AfterValidator(_cidr)]] = []
    ingress_certificate_name: str = Field("ggufstack-tls", pattern=r"^[A-Za-z0-9-]{1,127}$")

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
        share = self.replica_share
        allowance = f"after AKS's reservations and the node's DaemonSets, {self.gpu_vm_size} leaves each GPU's replica"
        if self.server_cpu is not None and self.server_cpu > share.cores:
            raise _problem(
                "serverCpu",
                f"{self.server_cpu} cores do not fit: {allowance} {share.cpu_m}m",
                f"1..{share.cores} (or leave it unset to request {share.cpu_m // 100 * 100}m)",
            )
        if self.server_memory_gi is not None and self.server_memory_gi > share.memory_gi:
            raise _problem(
                "serverMemoryGi",
                f"{self.server_memory_gi} GiB does not fit: {allowance} {share.memory_mi}Mi",
                f"1..{share.memory_gi} (or leave it unset)",
            )
        self._production_rules()
        self._model_rules()
        if self.api_server_access != "public" and ipaddress.IPv4Network(self.vnet_cidr).prefixlen > 21:
            raise _problem(
                "vnetCidr", f"{self.vnet_cidr} has no room for the API server's subnet", "a /16 to /21 network"
            )
        if self.ingress_exposure == "public" and self.ingress_host_name and not self.ingress_source_ranges:
            raise _problem(
                "ingressSourceRanges", "a public ingress needs the client ranges it admits", "a list of IPv4 CIDRs"
            )
        if self.postgres_geo_redundant_backup and self.location in UNPAIRED_REGIONS:
            raise _problem(
                "postgresGeoRedundantBackup", f"{self.location} has no paired region to keep backups in", "false"
            )
        if self.postgres_high_availability and self.postgres_tier == "Burstable":
            raise _problem("postgresHighAvailability", "Burstable servers have no HA", "false with a Standard_B sku")
        return self

    def _production_rules(self) -> None:
        if not self.production:
            return
        # VNet integration keeps the public endpoint ("API Server VNet Integration"); only a private cluster has none.
        if self.api_server_access != "private" and not self.api_server_authorized_ip_ranges:
            raise _problem(
                "apiServerAuthorizedIpRanges",
                f"required in production while apiServerAccess is {self.api_server_access} (its endpoint is public)",
                "a list of IPv4 CIDRs, or apiServerAccess private",
            )
        if self.data_plane_auth != "entra":
            raise _problem("dataPlaneAuth", "production allows no passwords or access keys", "entra")
        if not self.disable_local_accounts:
            raise _problem("disableLocalAccounts", "production allows no static cluster credentials", "true")

    def _model_rules(self) -> None:
        if not self.models:
            if self.model_blob_name is None:
                raise _problem(
                    "modelBlobName",
                    "required unless models lists a catalogue",
                    "a blob path ending in .gguf (`pulumi config set modelBlobName <blob>`)",
                )
            return
        single = {"modelBlobName": self.model_blob_name, "modelAlias": self.model_alias}
        for key, value in {**single, "modelVersion": self.model_version}.items():
            if value is not None:
                raise _problem(key, "serves one model, and models lists the catalogue", "unset, with models")
        misfit = (
            names_problem(self.models)
            or fit_problem(
                self.models,
                n_ctx=self.context_size,
                vm_size=self.gpu_vm_size,
                size=self.gpu,
                pod_memory_mi=self.server_memory_request_gi * 1024,
                budget_mib=self.model_memory_budget_mib,
            )
            or cache_problem(self.models, cache_gi=self.model_cache_size_gi)
        )
        if misfit is not None:
            raise _problem(misfit.key, misfit.problem, misfit.allowed)

    @property
    def replica_share(self) -> ReplicaShare:
        return replica_share(self.gpu)

    @property
    def server_cpu_m(self) -> int:
        """The replica's CPU request: the configured cores, or all of its share (whole tenths of a core)."""
        if self.server_cpu is not None:
            return self.server_cpu * 1000
        return self.replica_share.cpu_m // 100 * 100

    @property
    def server_memory_request_gi(self) -> int:
        return self.server_memory_gi if self.server_memory_gi is not None else self.replica_share.memory_gi

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
    return ValueError(f"{CONFIG_NAMESPACE}:{key}: {problem}; allowed: {allowed}")


_LIST_KEYS = frozenset(
    field.alias for field in StackConfig.model_fields.values() if getattr(field.annotation, "__origin__", None) is list
)


def parse(values: Mapping[str, str]) -> StackConfig:
    """Validate raw Pulumi config strings (keys without the namespace) into a StackConfig, or raise ConfigError."""
    known = {field.alias for field in StackConfig.model_fields.values()}
    unknown = sorted(set(values) - known)
    problems = [
        f"{CONFIG_NAMESPACE}:{key}: unknown key{_did_you_mean(key, known)}; allowed: {_names(known)}" for key in unknown
    ]
    data: dict[str, Any] = {}
    for key, raw in values.items():
        if key in _LIST_KEYS:
            try:
                data[key] = json.loads(raw)
            except json.JSONDecodeError:
                problems.append(f"{CONFIG_NAMESPACE}:{key}: {raw!r} is not a list; allowed: a YAML list")
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
        if key == "models" and len(error["loc"]) > 1:
            lines.append(_describe_model(error))
            continue
        if error["type"] == "missing":
            lines.append(f"{CONFIG_NAMESPACE}:{key}: required; set it with `pulumi config set {key} <value>`")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if "allowed:" not in message:
            message = f"{_given(error, message)}; allowed: {_allowed(key)}"
        lines.append(f"{CONFIG_NAMESPACE}:{key}: {message}")
    return "; ".join(lines)


def _given(error: Any, message: str) -> str:
    given = error.get("input")
    if error["type"] in ("literal_error", "bool_parsing"):
        return f"{given!r} is not allowed"
    if isinstance(given, str | int | float):
        return f"{given!r}: {message}"
    return message


def _describe_model(error: Any) -> str:
    """A problem inside one catalogue entry, named by its place: `ggufstack:models[1].contextSize: ...`."""
    loc = error["loc"]
    where = f"{CONFIG_NAMESPACE}:models" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    field = next((str(p) for p in loc[2:] if isinstance(p, str)), None)
    fields = {f.alias or name for name, f in StackModel.model_fields.items()}
    if error["type"] == "model_type":
        return f"{where}: {error.get('input')!r} is not a model; allowed: a map with id and blob (see docs/models.md)"
    if field is None or "allowed:" in message:
        return f"{where}: {message}"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key{_did_you_mean(field, fields)}; allowed: {_names(fields)}"
    if error["type"] == "missing":
        return f"{where}: required"
    schema = StackModel.model_json_schema(by_alias=True)["properties"][field]
    return f"{where}: {_given(error, message)}; allowed: {_allowed_by(schema, listed='items' in schema)}"


def _names(keys: set[str]) -> str:
    return ", ".join(sorted(keys))


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _allowed(key: str) -> str:
    return _allowed_by(StackConfig.model_json_schema(by_alias=True)["properties"][key], listed=key in _LIST_KEYS)


def _allowed_by(schema: dict[str, Any], *, listed: bool) -> str:
    schema = schema["items"] if listed else schema
    # Optional keys are `anyOf: [<type>, null]`; what is allowed is the non-null branch.
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if "enum" in schema:
        return ", ".join(str(v) for v in schema["enum"])
    if "$ref" in schema:
        return "maps with id and blob (docs/models.md)"
    if schema.get("type") == "boolean":
        return "true, false"
    if schema.get("type") in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", ""))
        return f"{'integers' if schema['type'] == 'integer' else 'numbers'} {low}..{schema.get('maximum', '')}"
    if "pattern" in schema:
        return f"values matching {schema['pattern']}"
    return f"strings of {schema.get('minLength', 1)}..{schema.get('maxLength', '')} characters"


def load() -> StackConfig:
    """Read the `ggufstack:*` keys of the current stack."""
    prefix = f"{CONFIG_NAMESPACE}:"
    values = {key.removeprefix(prefix): str(value) for key, value in _all_config().items() if key.startswith(prefix)}
    return parse(values)


def _all_config() -> dict[str, Any]:
    # pulumi.Config can only look keys up, not list them, and listing is what catches a misspelt key. Under the CLI
    # the language host passes config in PULUMI_CONFIG; under mocks and the Automation API it is set in-process.
    return {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
