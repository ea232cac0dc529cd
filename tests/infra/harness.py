"""Runs the real Pulumi program (stacks/__main__.py) offline under Pulumi's mocks and records what it declares.

Each run happens on a fresh thread: Pulumi keeps its runtime state (root stack, config, monitor) in context variables
and a thread starts with an empty context, so dev and prod runs in one process cannot leak into each other.

The mock behaves like Azure where the program depends on it: it fills in the names Pulumi would auto-generate and the
computed outputs other resources consume (endpoints, identities, the OIDC issuer, the kubeconfig). Every value it
hands out that Azure would treat as a credential is kept in `StackRun.secret_values`, so tests can check none of them
appears outside a Pulumi secret.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import runpy
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

from infra.config import StackConfig, parse

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "stacks" / "__main__.py"
PROJECT = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["name"]

SUBSCRIPTION_ID = "00000000-0000-0000-0000-0000000000aa"
TENANT_ID = "00000000-0000-0000-0000-0000000000bb"
DEPLOYER_OBJECT_ID = "00000000-0000-0000-0000-0000000000cc"
AKS_SERVER_APP_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
REDIS_PRIMARY_KEY = "mock+redis/primary=key"  # '+', '/' and '=' exercise URL escaping
# Stands for the cluster's CA in the kubeconfig: whatever the program does to the kubeconfig, it stays in it.
KUBECONFIG_MARKER = base64.b64encode(b"mock-cluster-ca-certificate").decode()

ROOT_STACK = "pulumi:pulumi:Stack"
# Azure Native's generic resource: any ARM resource at an explicit API version (the ManagedCluster is one).
GENERIC = "azure-native:resources:Resource"
# The input that carries each resource's own name (the rest of its *Name inputs name its parents).
NAME_INPUTS = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:network:VirtualNetwork": "virtualNetworkName",
    "azure-native:network:Subnet": "subnetName",
    "azure-native:network:NetworkSecurityGroup": "networkSecurityGroupName",
    "azure-native:network:PrivateEndpoint": "privateEndpointName",
    "azure-native:network:PrivateDnsZoneGroup": "privateDnsZoneGroupName",
    "azure-native:privatedns:PrivateZone": "privateZoneName",
    "azure-native:privatedns:VirtualNetworkLink": "virtualNetworkLinkName",
    "azure-native:operationalinsights:Workspace": "workspaceName",
    "azure-native:monitor:DiagnosticSetting": "name",
    "azure-native:keyvault:Vault": "vaultName",
    "azure-native:keyvault:Secret": "secretName",
    "azure-native:storage:StorageAccount": "accountName",
    "azure-native:storage:BlobServiceProperties": "blobServicesName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:dbforpostgresql:Server": "serverName",
    "azure-native:dbforpostgresql:Database": "databaseName",
    "azure-native:dbforpostgresql:Configuration": "configurationName",
    "azure-native:redisenterprise:RedisEnterprise": "clusterName",
    "azure-native:redisenterprise:Database": "databaseName",
    "azure-native:containerregistry:Registry": "registryName",
    "azure-native:managedidentity:UserAssignedIdentity": "resourceName",
    "azure-native:managedidentity:FederatedIdentityCredential": "federatedIdentityCredentialResourceName",
    "azure-native:resources:Resource": "resourceName",
    "azure-native:containerservice:AgentPool": "agentPoolName",
    "azure-native:authorization:RoleAssignment": "roleAssignmentName",
    "azure-native:monitor:DataCollectionRule": "dataCollectionRuleName",
    "azure-native:monitor:DataCollectionEndpoint": "dataCollectionEndpointName",
    "azure-native:monitor:DataCollectionRuleAssociation": "associationName",
    "azure-native:monitor:AzureMonitorWorkspace": "azureMonitorWorkspaceName",
    "azure-native:monitor:ActionGroup": "actionGroupName",
    "azure-native:alertsmanagement:PrometheusRuleGroup": "ruleGroupName",
    "azure-native:dashboard:Grafana": "workspaceName",
    "azure-native:applicationinsights:Component": "resourceName",
    "azure-native:containerservice:MaintenanceConfiguration": "configName",
    "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra": "objectId",
    "azure-native:redisenterprise:AccessPolicyAssignment": "accessPolicyAssignmentName",
    "azure-native:privatedns:PrivateRecordSet": "relativeRecordSetName",
}


def _guid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


class AzureMocks(pulumi.runtime.Mocks):
    def __init__(self, stack: str, location: str) -> None:
        self.stack = stack
        self.location = location
        self.secret_values = {REDIS_PRIMARY_KEY, KUBECONFIG_MARKER}
        # Every invoke the program made, by token: a preview may only make those a Reader may.
        self.calls: list[str] = []

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if not args.custom:
            return "", {}
        inputs = dict(args.inputs)
        if args.typ.startswith(("kubernetes:", "pulumi:providers:")):
            return f"{args.name}-id", inputs
        name = self._name(args)
        state = {**inputs, "name": name, **self._computed(args.typ, name, inputs)}
        group = _plain(inputs.get("resourceGroupName", "rg"))
        provider_type = args.typ.removeprefix("azure-native:").replace(":", "/")
        if args.typ == GENERIC:
            provider_type = f"{inputs['resourceProviderNamespace']}/{inputs['resourceType']}"
        return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{group}/providers/{provider_type}/{name}", state

    def _name(self, args: MockResourceArgs) -> str:
        key = NAME_INPUTS.get(args.typ)
        given = args.inputs.get(key) if key else None
        if given:
            return _plain(given)
        if args.typ == "azure-native:authorization:RoleAssignment":
            return _guid(args.name)
        # Azure Native's auto-naming: the logical name plus eight random characters.
        return args.name + hashlib.sha256(args.name.encode()).hexdigest()[:8]

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if typ == "random:index/randomPassword:RandomPassword":
            value = f"Mock-{hashlib.sha256(f'{self.stack}/{name}'.encode()).hexdigest()[:16]}-_Aa1"
            self.secret_values.add(value)
            return {"result": value}
        if typ == "azure-native:storage:StorageAccount":
            return {"primaryEndpoints": {"blob": f"https://{name}.blob.core.windows.net/"}}
        if typ == "azure-native:keyvault:Vault":
            return {"properties": {**_plain(inputs["properties"]), "vaultUri": f"https://{name}.vault.azure.net/"}}
        if typ == "azure-native:containerregistry:Registry":
            return {"loginServer": f"{name}.azurecr.io"}
        if typ == "azure-native:redisenterprise:RedisEnterprise":
            return {"hostName": f"{name}.{self.location}.redis.azure.net"}
        if typ == "azure-native:dbforpostgresql:Server":
            return {"fullyQualifiedDomainName": f"{name}.postgres.database.azure.com"}
        if typ == "azure-native:managedidentity:UserAssignedIdentity":
            return {"clientId": _guid(name, "client"), "principalId": _guid(name, "principal"), "tenantId": TENANT_ID}
        if typ == "azure-native:monitor:AzureMonitorWorkspace":
            endpoint = f"https://{name}.{self.location}.prometheus.monitor.azure.com"
            return {"metrics": {"prometheusQueryEndpoint": endpoint, "internalId": _guid(name, "internal")}}
        if typ == "azure-native:dashboard:Grafana":
            return {
                "identity": {"type": "SystemAssigned", "principalId": _guid(name, "principal")},
                "properties": {**_plain(inputs["properties"]), "endpoint": f"https://{name}.weu.grafana.azure.com"},
            }
        if typ == "azure-native:applicationinsights:Component":
            value = f"InstrumentationKey={_guid(name, 'ikey')};IngestionEndpoint=https://{self.location}.in.ai"
            self.secret_values.add(value)
            return {"connectionString": value}
        if typ == GENERIC and inputs["resourceType"] == "managedClusters":
            kubelet = {"objectId": _guid(name, "kubelet"), "clientId": _guid(name, "kubelet-client")}
            issuer = f"https://{self.location}.oic.prod-aks.azure.com/{TENANT_ID}/{_guid(name, 'issuer')}/"
            identity = _plain(inputs["identity"])
            properties = _plain(inputs["properties"])
            return {
                # Azure answers with a map of identity id to its principal, where the request had a list of ids.
                "identity": {**identity, "userAssignedIdentities": {i: {} for i in identity["userAssignedIdentities"]}},
                "properties": {
                    **properties,
                    "identityProfile": {"kubeletidentity": kubelet},
                    "oidcIssuerProfile": {**properties["oidcIssuerProfile"], "issuerURL": issuer},
                    "fqdn": f"{name}.hcp.{self.location}.azmk8s.io",
                },
            }
        return {}

    def call(self, args: MockCallArgs) -> dict[str, Any]:
        self.calls.append(args.token)
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": _guid("deployer-client"),
                "objectId": DEPLOYER_OBJECT_ID,
                "subscriptionId": SUBSCRIPTION_ID,
                "tenantId": TENANT_ID,
            }
        if args.token == "azure-native:containerservice:listManagedClusterUserCredentials":
            kubeconfig = aks_user_kubeconfig(args.args["resourceName"])
            return {"kubeconfigs": [{"name": "clusterUser", "value": base64.b64encode(kubeconfig.encode()).decode()}]}
        if args.token == "azure-native:redisenterprise:listDatabaseKeys":
            return {"primaryKey": REDIS_PRIMARY_KEY, "secondaryKey": REDIS_PRIMARY_KEY[::-1]}
        raise NotImplementedError(f"the program invokes {args.token}, which the mock does not know")


# kubelogin's arguments in such a kubeconfig: an interactive device-code login through the Azure CLI's client app.
DEVICE_CODE_ARGS = (
    f"get-token --environment AzurePublicCloud --server-id {AKS_SERVER_APP_ID} "
    f"--client-id 80faf920-1908-4b52-b5ef-a8e7bedfc67a --tenant-id {TENANT_ID} --login devicecode"
).split()


def aks_user_kubeconfig(cluster: str) -> str:
    """What AKS returns for `listClusterUserCredential?format=exec` on an Entra ID cluster: a device-code login."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster,
                    "cluster": {
                        "certificate-authority-data": KUBECONFIG_MARKER,
                        "server": f"https://{cluster}.hcp.westeurope.azmk8s.io:443",
                    },
                }
            ],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"clusterUser_{cluster}"}}],
            "current-context": cluster,
            "users": [
                {
                    "name": f"clusterUser_{cluster}",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "kubelogin",
                            "args": DEVICE_CODE_ARGS,
                            "provideClusterInfo": False,
                        }
                    },
                }
            ],
        }
    )


@dataclass
class Registration:
    """One resource the program registered, with its inputs exactly as sent (secrets still marked) and options."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str
    provider: str
    inputs: dict[str, Any]
    ignore_changes: list[str]
    dependencies: list[str]
    custom_timeouts: dict[str, str]
    # The URNs this resource had before it moved (Pulumi's `aliases`), resolved as the engine resolves them.
    aliases: list[str] = field(default_factory=list)
    id: str = ""
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def plain(self) -> dict[str, Any]:
        """The inputs with Pulumi's secret markers removed."""
        return _plain(self.inputs)

    @property
    def outputs(self) -> dict[str, Any]:
        """The state the mock answered with, secret markers removed."""
        return _plain(self.state)


class RecordingMonitor(MockMonitor):
    """The stock mock monitor, plus a record of every registration including the options the mocks cannot see."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method name
        response = super().RegisterResource(request)
        timeouts = request.customTimeouts
        registration = Registration(
            type=request.type,
            name=request.name,
            urn=response.urn,
            custom=request.custom,
            parent=request.parent,
            provider=request.provider,
            inputs=rpc.deserialize_properties(request.object),
            ignore_changes=list(request.ignoreChanges),
            dependencies=list(request.dependencies),
            custom_timeouts={"create": timeouts.create, "update": timeouts.update, "delete": timeouts.delete},
            aliases=[_alias_urn(alias, request) for alias in request.aliases],
        )
        if response.urn in self.resources:
            registration.id = self.resources[response.urn].id
            registration.state = self.resources[response.urn].state
        with self._lock:
            self.registrations.append(registration)
        return response


def _alias_urn(alias: Any, request: Any) -> str:
    """The URN an alias names: given whole, or as a spec whose unset parts are the resource's own, resolved by the
    engine's rule: the parent's type chain goes in front of the type, except the root stack's type, which the mock's
    own URNs carry for top-level resources and the engine's never do."""
    if alias.WhichOneof("alias") == "urn":
        return alias.urn
    spec = alias.spec
    parent = "" if spec.noParent else spec.parentUrn or request.parent
    typ = spec.type or request.type
    parent_type = parent.split("::")[2].removeprefix(f"{ROOT_STACK}$") if parent else ""
    if parent_type and parent_type != ROOT_STACK:
        typ = f"{parent_type}${typ}"
    stack = spec.stack or pulumi.get_stack()
    return f"urn:pulumi:{stack}::{spec.project or PROJECT}::{typ}::{spec.name or request.name}"


@dataclass(frozen=True)
class StackOutput:
    value: Any
    secret: bool


@dataclass
class StackRun:
    stack: str
    config: dict[str, str]
    registrations: list[Registration]
    outputs: dict[str, StackOutput]
    secret_values: set[str]
    calls: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> StackConfig:
        return parse({key.removeprefix(f"{PROJECT}:"): value for key, value in self.config.items()})

    @property
    def name(self) -> str:
        return self.cfg.base_name(self.stack)

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Registration:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def managed_cluster(self) -> Registration:
        """The AKS cluster, declared as a generic resource, with its `properties` lifted to the top level of its
        inputs and state (as the typed ManagedCluster has them) next to sku, identity, location and tags."""
        (cluster,) = [r for r in self.of_type(GENERIC) if r.plain["resourceType"] == "managedClusters"]
        return dataclasses.replace(cluster, inputs=_lift(cluster.inputs), state=_lift(cluster.state))

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def kubernetes_objects(self) -> Iterator[tuple[Registration, dict[str, Any]]]:
        for r in self.registrations:
            if r.custom and r.type.startswith("kubernetes:"):
                yield r, r.plain


def stack_config(stack: str) -> dict[str, str]:
    """`Pulumi.<stack>.yaml`'s config as the Pulumi CLI hands it to a program: every value a string, lists as JSON."""
    document = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    return {key: _config_string(value) for key, value in document["config"].items()}


def _config_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def run_program(stack: str, config: dict[str, str], *, preview: bool = False) -> StackRun:
    """Run stacks/__main__.py as `stack` with `config` (namespaced keys) and return what it declared; `preview`: as
    `pulumi preview` runs it."""
    result: dict[str, Any] = {}

    def target() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            result["run"] = _run_in_thread(stack, config, preview)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            result["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=target, name=f"pulumi-{stack}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


def _run_in_thread(stack: str, config: dict[str, str], preview: bool) -> StackRun:
    mocks = AzureMocks(stack, config.get(f"{PROJECT}:location", "westeurope"))
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(config)
    outputs: dict[str, StackOutput] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[None]:
        runpy.run_path(str(PROGRAM), run_name="__main__")
        exported = pulumi.runtime.get_root_resource().outputs

        async def resolve() -> None:
            for key, value in exported.items():
                output = pulumi.Output.from_input(value)
                outputs[key] = StackOutput(await output.future(), await output.is_secret())

        return pulumi.Output.from_input(resolve())

    program()
    return StackRun(stack, config, monitor.registrations, outputs, mocks.secret_values, mocks.calls)


def _lift(fields: dict[str, Any]) -> dict[str, Any]:
    properties = _plain(fields.get("properties", {}))
    return {**{k: v for k, v in fields.items() if k != "properties"}, **properties}


def _plain(value: Any) -> Any:
    """`value` with Pulumi's secret markers removed, recursively.

    Numbers cross the mock's protobuf boundary as doubles; whole ones become ints again, as in the JSON the engine
    would send to Azure or Kubernetes.
    """
    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def plaintext_secrets(value: Any, secrets: set[str], path: str = "") -> Iterator[str]:
    """Paths in `value` where one of `secrets` appears outside a Pulumi secret marker."""
    if rpc.is_rpc_secret(value):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from plaintext_secrets(v, secrets, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from plaintext_secrets(v, secrets, f"{path}[{i}]")
    elif isinstance(value, str) and any(secret in value for secret in secrets):
        yield path or "<value>"


def is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)
