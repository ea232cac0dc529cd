"""AKS, its Kubernetes provider, and the server's workload identity with exactly the permissions it needs."""

from __future__ import annotations

import pytest

from infra.cluster import azure_cli_kubeconfig
from infra.roles import (
    AKS_RBAC_CLUSTER_ADMIN,
    GRAFANA_ADMIN,
    KEY_VAULT_SECRETS_USER,
    MONITORING_DATA_READER,
    NETWORK_CONTRIBUTOR,
    STORAGE_BLOB_DATA_READER,
)
from tests.infra.harness import (
    AKS_SERVER_APP_ID,
    DEPLOYER_OBJECT_ID,
    SUBSCRIPTION_ID,
    Registration,
    StackRun,
    aks_user_kubeconfig,
    is_secret,
)


def _role_id(role: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleDefinitions/{role}"


def _assignments(stack: StackRun, role: str) -> list[dict]:
    return [
        r.plain
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
        if r.plain["roleDefinitionId"] == _role_id(role)
    ]


def _identity(stack: StackRun, suffix: str) -> Registration:
    (identity,) = [
        r
        for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity")
        if r.plain["resourceName"] == f"id-{stack.name}-{suffix}"
    ]
    return identity


def test_cluster_runs_the_configured_kubernetes_version_and_tier(stack: StackRun) -> None:
    cluster = stack.managed_cluster().plain
    assert cluster["kubernetesVersion"] == stack.cfg.kubernetes_version
    assert cluster["sku"] == {"name": "Base", "tier": stack.cfg.cluster_tier}
    assert cluster["autoUpgradeProfile"] == {"upgradeChannel": "patch", "nodeOSUpgradeChannel": "NodeImage"}


def test_cluster_has_oidc_issuer_and_workload_identity(stack: StackRun) -> None:
    cluster = stack.managed_cluster().plain
    assert cluster["oidcIssuerProfile"] == {"enabled": True}
    assert cluster["securityProfile"]["workloadIdentity"] == {"enabled": True}


def test_cluster_uses_entra_id_with_azure_rbac(stack: StackRun) -> None:
    cluster = stack.managed_cluster().plain
    assert cluster["enableRBAC"] is True
    assert cluster["aadProfile"]["managed"] is True
    assert cluster["aadProfile"]["enableAzureRBAC"] is True
    assert cluster["disableLocalAccounts"] is stack.cfg.disable_local_accounts


def test_prod_cluster_has_no_local_accounts(prod: StackRun) -> None:
    assert prod.managed_cluster().plain["disableLocalAccounts"] is True


def test_cluster_networking_is_azure_cni_overlay_with_network_policy(stack: StackRun) -> None:
    profile = stack.managed_cluster().plain["networkProfile"]
    assert (profile["networkPlugin"], profile["networkPluginMode"]) == ("azure", "overlay")
    assert (profile["networkPolicy"], profile["networkDataplane"]) == ("cilium", "cilium")


def test_cluster_addons_report_to_the_workspace_and_mount_key_vault_secrets(stack: StackRun) -> None:
    addons = stack.managed_cluster().plain["addonProfiles"]
    workspace = stack.one("azure-native:operationalinsights:Workspace").id
    assert addons["omsagent"]["enabled"] is True
    assert addons["omsagent"]["config"]["logAnalyticsWorkspaceResourceID"] == workspace
    assert addons["azureKeyvaultSecretsProvider"]["enabled"] is True


def test_system_pool_is_inline_and_reserved_for_system_pods(stack: StackRun) -> None:
    cluster = stack.managed_cluster().plain
    nodes_subnet = next(
        r.id for r in stack.of_type("azure-native:network:Subnet") if r.plain["subnetName"] == "aks-nodes"
    )
    (system,) = cluster["agentPoolProfiles"]
    assert (system["name"], system["mode"]) == ("system", "System")
    assert system["vmSize"] == stack.cfg.system_vm_size
    assert system["count"] == stack.cfg.system_node_count
    assert system["nodeTaints"] == ["CriticalAddonsOnly=true:NoSchedule"]
    assert system["vnetSubnetID"] == nodes_subnet
    assert system.get("availabilityZones", []) == stack.cfg.availability_zones


def test_control_plane_identity_may_join_the_node_subnet_before_the_cluster_exists(stack: StackRun) -> None:
    cluster = stack.managed_cluster()
    control_plane = _identity(stack, "aks")
    assert cluster.plain["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [control_plane.id]}
    (subnet_access,) = [
        r
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
        if r.name == "cluster-control-plane-subnet"
    ]
    assert subnet_access.plain["roleDefinitionId"] == _role_id(NETWORK_CONTRIBUTOR)
    assert subnet_access.plain["principalId"] == control_plane.outputs["principalId"]
    assert subnet_access.urn in cluster.dependencies


def test_cluster_admin_is_the_configured_group_not_whoever_ran_pulumi(prod: StackRun) -> None:
    cluster = prod.managed_cluster().id
    (admin,) = _assignments(prod, AKS_RBAC_CLUSTER_ADMIN)
    assert (admin["scope"], admin["principalId"], admin["principalType"]) == (
        cluster,
        prod.cfg.cluster_admin_group_object_id,
        "Group",
    )
    assert DEPLOYER_OBJECT_ID not in repr([r.plain for r in prod.of_type("azure-native:authorization:RoleAssignment")])


def test_cluster_admin_is_the_admin_group_in_every_stack_not_whoever_ran_up_last(stack: StackRun) -> None:
    (admin,) = _assignments(stack, AKS_RBAC_CLUSTER_ADMIN)
    assert (admin["principalId"], admin["principalType"]) == (stack.cfg.cluster_admin_group_object_id, "Group")
    assert DEPLOYER_OBJECT_ID not in repr([r.plain for r in stack.of_type("azure-native:authorization:RoleAssignment")])


def test_role_assignments_are_exactly_the_ones_the_design_needs(stack: StackRun) -> None:
    roles = sorted(
        r.plain["roleDefinitionId"].rsplit("/", 1)[1]
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
    )
    expected = [
        NETWORK_CONTRIBUTOR,
        STORAGE_BLOB_DATA_READER,
        KEY_VAULT_SECRETS_USER,
        AKS_RBAC_CLUSTER_ADMIN,
        "7f951dda-4ed3-4680-a7ca-43fe172d538d",
        MONITORING_DATA_READER,  # Grafana reads the Azure Monitor workspace
        MONITORING_DATA_READER,  # so does KEDA's scaler
    ]
    if stack.cfg.cluster_admin_group_object_id:
        expected.append(GRAFANA_ADMIN)
    if stack.cfg.api_server_access != "public":
        expected.append(NETWORK_CONTRIBUTOR)  # the API server's subnet
    if stack.cfg.ingress_host_name:
        expected.append(KEY_VAULT_SECRETS_USER)  # the ingress certificate's reader
    assert roles == sorted(expected)


def test_cluster_has_no_local_accounts_in_any_stack(stack: StackRun) -> None:
    assert stack.managed_cluster().plain["disableLocalAccounts"] is True


def test_cluster_runs_the_metrics_and_keda_add_ons_and_app_routing_without_nginx(stack: StackRun) -> None:
    cluster = stack.managed_cluster().plain
    assert cluster["azureMonitorProfile"] == {"metrics": {"enabled": True}}
    assert cluster["workloadAutoScalerProfile"] == {"keda": {"enabled": True}}
    assert cluster["ingressProfile"]["webAppRouting"]["nginx"] == {"defaultIngressControllerType": "None"}


def test_cluster_installs_the_gateway_api_crds_and_app_routings_istio_gateway_through_arm(stack: StackRun) -> None:
    """Without both the Gateway, HTTPRoute (and the GatewayClass approuting-istio) fail with "no matches for kind".

    Docs: "Azure Kubernetes Service (AKS) application routing add-on with the Kubernetes Gateway API"
    (https://learn.microsoft.com/azure/aks/app-routing-gateway-api) names the managed Gateway API CRDs as its
    prerequisite (`az aks update --enable-gateway-api --enable-app-routing-istio`); the REST spec
    Microsoft.ContainerService/aks/stable/2026-02-01/managedClusters.json adds `ingressProfile.gatewayAPI` and
    `webAppRouting.gatewayAPIImplementations`, which the pinned azure-native's ManagedCluster (API 2025-09-01) lacks,
    so the cluster is Azure Native's generic resource at that API version ("Azure Native version guide", Using the
    generic resource, https://www.pulumi.com/registry/packages/azure-native/version-guide/).
    """
    cluster = stack.managed_cluster()
    assert cluster.plain["apiVersion"] >= "2026-02-01"
    assert (cluster.plain["resourceProviderNamespace"], cluster.plain["resourceType"]) == (
        "Microsoft.ContainerService",
        "managedClusters",
    )
    profile = cluster.plain["ingressProfile"]
    assert profile["gatewayAPI"] == {"installation": "Standard"}
    assert profile["webAppRouting"]["enabled"] is True
    assert profile["webAppRouting"]["gatewayAPIImplementations"] == {"appRoutingIstio": {"mode": "Enabled"}}


def test_upgrades_and_node_images_wait_for_the_configured_window(stack: StackRun) -> None:
    cfg = stack.cfg
    configs = {
        r.plain["configName"]: r.plain for r in stack.of_type("azure-native:containerservice:MaintenanceConfiguration")
    }
    assert set(configs) == {"aksManagedAutoUpgradeSchedule", "aksManagedNodeOSUpgradeSchedule"}
    for config in configs.values():
        assert config["resourceName"] == f"aks-{stack.name}"
        assert config["maintenanceWindow"] == {
            "schedule": {"weekly": {"dayOfWeek": cfg.maintenance_day, "intervalWeeks": 1}},
            "startTime": f"{cfg.maintenance_start_hour:02d}:00",
            "durationHours": cfg.maintenance_duration_hours,
            "utcOffset": cfg.maintenance_utc_offset,
        }


def test_kubernetes_provider_gets_the_kubeconfig_only_as_a_secret(stack: StackRun) -> None:
    provider = stack.one("pulumi:providers:kubernetes")
    assert is_secret(provider.inputs["kubeconfig"])
    assert stack.by_urn(provider.parent).type == "ggufstack:infra:Cluster"


@pytest.mark.parametrize("cluster", ["aks-a", "aks-b"])
def test_kubeconfig_rewrite_swaps_device_code_for_azure_cli(cluster: str) -> None:
    import yaml

    original = yaml.safe_load(aks_user_kubeconfig(cluster))
    rewritten = yaml.safe_load(azure_cli_kubeconfig(aks_user_kubeconfig(cluster)))
    assert rewritten["users"][0]["user"]["exec"]["args"] == [
        "get-token",
        "--login",
        "azurecli",
        "--server-id",
        AKS_SERVER_APP_ID,
    ]
    for key in ("clusters", "contexts", "current-context"):
        assert rewritten[key] == original[key]
