"""The program as a whole: what it is composed of, how resources hang together, and what it exports."""

from __future__ import annotations

import yaml

from tests.infra.harness import KUBECONFIG_MARKER, REPO, StackRun, plaintext_secrets

COMPONENTS = {
    "ggufstack:infra:Network",
    "ggufstack:infra:Monitoring",
    "ggufstack:infra:Diagnostics",
    "ggufstack:infra:Vault",
    "ggufstack:infra:AdminKey",
    "ggufstack:infra:Storage",
    "ggufstack:infra:Database",
    "ggufstack:infra:Cache",
    "ggufstack:infra:Cluster",
    "ggufstack:infra:GpuPool",
    "ggufstack:infra:Identities",
    "ggufstack:infra:Registry",
    "ggufstack:infra:Workload",
    "ggufstack:infra:ContainerInsights",
    "ggufstack:infra:ManagedPrometheus",
    "ggufstack:infra:AppInsights",
    "ggufstack:infra:Autoscaling",
    "ggufstack:infra:Ingress",
}


def test_every_component_is_declared_once(stack: StackRun) -> None:
    components = [r.type for r in stack.registrations if r.type.startswith("ggufstack:")]
    assert sorted(components) == sorted(COMPONENTS)


def test_stacks_only_compose_components() -> None:
    program = (REPO / "stacks" / "__main__.py").read_text()
    # Azure resources are declared by components; the program's only own resource is the resource group.
    assert program.count("resources.ResourceGroup(") == 1
    assert "import pulumi_kubernetes" not in program and "pulumi_kubernetes import" not in program


def test_every_resource_belongs_to_a_component_except_the_resource_group(stack: StackRun) -> None:
    root = stack.one("pulumi:pulumi:Stack").urn
    for r in stack.registrations:
        if r.type == "pulumi:pulumi:Stack":
            continue
        parent = stack.by_urn(r.parent)
        if r.type in COMPONENTS or r.type == "azure-native:resources:ResourceGroup":
            assert r.parent == root, r.name
        else:
            assert parent.type in COMPONENTS, f"{r.type} {r.name} is parented to {parent.type}"


def test_resources_live_in_the_stack_resource_group_and_location(stack: StackRun) -> None:
    group = stack.one("azure-native:resources:ResourceGroup")
    assert group.plain["resourceGroupName"] == f"rg-{stack.name}"
    assert group.plain["location"] == stack.cfg.location
    for r in stack.registrations:
        inputs = r.plain
        if r.type.startswith("azure-native:") and "resourceGroupName" in inputs and r is not group:
            assert inputs["resourceGroupName"] == group.plain["resourceGroupName"], r.name
        if r.type.startswith("azure-native:") and "location" in inputs:
            assert inputs["location"] in (stack.cfg.location, "global"), r.name


# Azure's tracked resources: the ones that carry tags (sub-resources such as subnets or secrets cannot).
TAGGABLE = {
    f"azure-native:{t}"
    for t in (
        "resources:ResourceGroup", "network:VirtualNetwork", "network:NetworkSecurityGroup", "network:PrivateEndpoint",
        "privatedns:PrivateZone", "privatedns:VirtualNetworkLink", "operationalinsights:Workspace", "keyvault:Vault",
        "storage:StorageAccount", "dbforpostgresql:Server", "redisenterprise:RedisEnterprise",
        "containerregistry:Registry", "managedidentity:UserAssignedIdentity", "resources:Resource",
        "containerservice:AgentPool", "monitor:DataCollectionRule", "monitor:DataCollectionEndpoint",
        "monitor:AzureMonitorWorkspace", "alertsmanagement:PrometheusRuleGroup", "dashboard:Grafana",
        "applicationinsights:Component",
    )
}  # fmt: skip


def test_every_tracked_resource_carries_the_stack_tags(stack: StackRun) -> None:
    tracked = [r for r in stack.registrations if r.type in TAGGABLE]
    assert {r.type for r in tracked} >= TAGGABLE - {"azure-native:network:PrivateEndpoint"}
    for r in tracked:
        assert r.plain["tags"] == {"app": "ggufstack", "stack": stack.stack, "managed-by": "pulumi"}, r.name


def test_outputs_name_what_operators_need(stack: StackRun) -> None:
    outputs = stack.outputs
    registry = stack.one("azure-native:containerregistry:Registry").state
    account = stack.one("azure-native:storage:StorageAccount").state
    assert outputs["resourceGroupName"].value == f"rg-{stack.name}"
    assert outputs["serverUrl"].value == "http://ggufstack-server.ggufstack.svc.cluster.local"
    assert outputs["acrLoginServer"].value == registry["loginServer"]
    assert outputs["acrName"].value == registry["name"]
    assert outputs["serverImage"].value == f"{registry['loginServer']}/ggufstack-server:{stack.cfg.server_image_tag}"
    assert outputs["modelsContainerUrl"].value == f"https://{account['name']}.blob.core.windows.net/models"
    assert outputs["clusterName"].value == f"aks-{stack.name}"
    assert outputs["keyVaultName"].value == stack.one("azure-native:keyvault:Vault").state["name"]
    assert outputs["grafanaName"].value == stack.one("azure-native:dashboard:Grafana").state["name"]
    assert outputs["ingressUrl"].value == f"https://{stack.cfg.ingress_host_name}"


def test_kubeconfig_is_exported_only_as_a_secret(stack: StackRun) -> None:
    kubeconfig = stack.outputs["kubeconfig"]
    assert kubeconfig.secret
    assert KUBECONFIG_MARKER in kubeconfig.value


def test_no_output_but_the_kubeconfig_is_secret_or_holds_one(stack: StackRun) -> None:
    for key, output in stack.outputs.items():
        if key != "kubeconfig":
            assert not output.secret, key
            assert not list(plaintext_secrets(output.value, stack.secret_values)), key


def test_exported_kubeconfig_logs_in_through_the_azure_cli(stack: StackRun) -> None:
    config = yaml.safe_load(stack.outputs["kubeconfig"].value)
    (user,) = config["users"]
    assert user["user"]["exec"]["command"] == "kubelogin"
    assert user["user"]["exec"]["args"] == [
        "get-token",
        "--login",
        "azurecli",
        "--server-id",
        "6dae42f8-4368-4678-94ff-3960e28e3630",
    ]
