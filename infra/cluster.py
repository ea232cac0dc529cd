"""AKS: the cluster with its small system pool, and the Kubernetes provider the other components apply through.

The cluster's own identity and rights are here: a control-plane identity granted its subnets before the cluster
exists, and cluster admin for the deployers' group, which the kubeconfig waits for. The pods' identities are
infra/identities.py's; the GPU nodes are infra/gpu_pool.py's.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import authorization, containerservice, managedidentity, resources

from infra.config import DNS_SERVICE_IP, POD_CIDR, SERVICE_CIDR
from infra.moved import WORKLOAD, moved_from
from infra.roles import AKS_RBAC_CLUSTER_ADMIN, NETWORK_CONTRIBUTOR, role_definition_id, service_principal_role

# The first stable ManagedCluster API with `ingressProfile.gatewayAPI` and the application routing add-on's
# `gatewayAPIImplementations` (REST spec: specification/containerservice/resource-manager/Microsoft.ContainerService/
# aks/stable/2026-02-01/managedClusters.json).
MANAGED_CLUSTER_API_VERSION = "2026-02-01"
SYSTEM_TAINT = ("CriticalAddonsOnly", "true", "NoSchedule")


@dataclass(frozen=True)
class MaintenanceWindow:
    """When AKS may upgrade the cluster and reimage nodes: weekly, from `start_hour` for `duration_hours`."""

    day: str
    start_hour: int
    duration_hours: int
    utc_offset: str


# AKS's names for the two schedules: Kubernetes version upgrades, and node OS image updates.
MAINTENANCE_CONFIGURATIONS = ("aksManagedAutoUpgradeSchedule", "aksManagedNodeOSUpgradeSchedule")


@dataclass(frozen=True)
class ClusterArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    subscription_id: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    # Whoever runs `pulumi up` (a developer or CI's service principal) must be able to apply the workload: the Entra
    # group whose members are the people and CI identities that deploy.
    cluster_admin_group_object_id: str
    kubernetes_version: str
    tier: str
    nodes_subnet_id: pulumi.Input[str]
    workspace_id: pulumi.Input[str]
    system_vm_size: str
    system_node_count: int
    availability_zones: Sequence[str]
    maintenance: MaintenanceWindow
    disable_local_accounts: bool
    admin_group_object_ids: Sequence[str]
    api_server_access: str
    api_server_subnet_id: pulumi.Input[str] | None
    api_server_authorized_ip_ranges: Sequence[str]
    tags: Mapping[str, str]


class Cluster(pulumi.ComponentResource):
    cluster_id: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    oidc_issuer_url: pulumi.Output[str]
    kubelet_object_id: pulumi.Output[str]
    # The user kubeconfig, rewritten to log in with the Azure CLI; a Pulumi secret. It resolves only once the
    # deployer can use it (its cluster-admin role assignment exists).
    kubeconfig: pulumi.Output[str]
    # For pods that belong on the system pool: the gateway's proxies and the certificate sync pod.
    system_tolerations: Sequence[Mapping[str, str]]
    provider: k8s.Provider

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg, location = args.resource_group_name, args.location

        # A user-assigned control-plane identity exists before the cluster, so it can be granted the subnet first.
        control_plane = managedidentity.UserAssignedIdentity(
            f"{name}-control-plane",
            resource_name_=f"id-{args.name}-aks",
            resource_group_name=rg,
            location=location,
            tags=args.tags,
            opts=child,
        )
        # AKS joins nodes to their subnet and, with VNet integration, the API server's load balancer to its own: the
        # control plane must hold Network Contributor on both before the cluster is created ("API Server VNet
        # Integration": missing permissions on the API server subnet fail provisioning).
        subnet_access = [
            service_principal_role(
                f"{name}-control-plane-{purpose}",
                scope=subnet,
                role=NETWORK_CONTRIBUTOR,
                principal_id=control_plane.principal_id,
                subscription_id=args.subscription_id,
                opts=child,
            )
            for purpose, subnet in self._subnets(args).items()
        ]

        # A generic resource at an explicit API version: the ManagedCluster of the pinned azure-native (API
        # 2025-09-01) has no field for the managed Gateway API CRDs or the application routing add-on's Istio
        # implementation, which API 2026-02-01 has (see MANAGED_CLUSTER_API_VERSION).
        cluster = resources.Resource(
            f"{name}-aks",
            resource_provider_namespace="Microsoft.ContainerService",
            parent_resource_path="",
            resource_type="managedClusters",
            resource_name_=f"aks-{args.name}",
            api_version=MANAGED_CLUSTER_API_VERSION,
            resource_group_name=rg,
            location=location,
            sku=resources.SkuArgs(name="Base", tier=args.tier),
            identity=resources.IdentityArgs(type="UserAssigned", user_assigned_identities=[control_plane.id]),
            properties=self._cluster_properties(args),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=subnet_access),
        )

        window = args.maintenance
        for config_name in MAINTENANCE_CONFIGURATIONS:
            containerservice.MaintenanceConfiguration(
                f"{name}-{config_name}",
                config_name=config_name,
                resource_name_=cluster.name,
                resource_group_name=rg,
                maintenance_window=containerservice.MaintenanceWindowArgs(
                    schedule=containerservice.ScheduleArgs(
                        weekly=containerservice.WeeklyScheduleArgs(day_of_week=window.day, interval_weeks=1)
                    ),
                    start_time=f"{window.start_hour:02d}:00",
                    duration_hours=window.duration_hours,
                    utc_offset=window.utc_offset,
                ),
                opts=child,
            )

        # A fixed principal: with the caller, a laptop run and a CI run would replace each other's assignment.
        deployer_admin = authorization.RoleAssignment(
            f"{name}-deployer-cluster-admin",
            scope=cluster.id,
            role_definition_id=role_definition_id(args.subscription_id, AKS_RBAC_CLUSTER_ADMIN),
            principal_id=args.cluster_admin_group_object_id,
            principal_type="Group",
            description="Cluster admins, among them the identities that run pulumi and apply the workload",
            opts=child,
        )

        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=rg, resource_name=cluster.name, format="exec"
        )
        # AKS does not mark the kubeconfig secret; it is one from the moment it is read.
        encoded = pulumi.Output.secret(credentials.apply(lambda c: c.kubeconfigs[0].value))
        kubeconfig = pulumi.Output.all(encoded, deployer_admin.id).apply(
            lambda parts: azure_cli_kubeconfig(base64.b64decode(parts[0]).decode())
        )

        self.cluster_id = cluster.id
        self.cluster_name = cluster.name
        self.oidc_issuer_url = cluster.properties.apply(lambda p: p["oidcIssuerProfile"]["issuerURL"])
        self.kubelet_object_id = cluster.properties.apply(lambda p: p["identityProfile"]["kubeletidentity"]["objectId"])
        self.kubeconfig = kubeconfig
        self.system_tolerations = [toleration(SYSTEM_TAINT)]
        # Components that apply Kubernetes objects (GPU pool, workload, autoscaling, ingress) do it through this.
        self.provider = k8s.Provider(
            f"{name}-kubernetes",
            kubeconfig=kubeconfig,
            enable_server_side_apply=True,
            # Deleting the cluster deletes everything in it; do not fail the destroy on an unreachable API.
            delete_unreachable=True,
            opts=pulumi.ResourceOptions(parent=self, aliases=[moved_from(WORKLOAD, "aks")]),
        )
        self.register_outputs(
            {
                "cluster_id": self.cluster_id,
                "cluster_name": self.cluster_name,
                "oidc_issuer_url": self.oidc_issuer_url,
                "kubelet_object_id": self.kubelet_object_id,
                "kubeconfig": self.kubeconfig,
            }
        )

    @staticmethod
    def _subnets(args: ClusterArgs) -> dict[str, pulumi.Input[str]]:
        """Every subnet the cluster puts something in, by purpose."""
        subnets: dict[str, pulumi.Input[str]] = {"subnet": args.nodes_subnet_id}
        if args.api_server_access != "public":
            if args.api_server_subnet_id is None:
                raise ValueError(f"apiServerAccess {args.api_server_access} needs the API server subnet")
            subnets["api-server-subnet"] = args.api_server_subnet_id
        return subnets

    @staticmethod
    def _cluster_properties(args: ClusterArgs) -> dict[str, Any]:
        """The ManagedCluster's `properties` at MANAGED_CLUSTER_API_VERSION, in the REST API's names.

        Sub-objects the pinned SDK knows are its typed Args (their field names checked in Python, serialized under
        the REST names); only what is new in 2026-02-01 is written as plain dictionaries.
        """
        vnet_integration = args.api_server_access != "public"
        return {
            "dnsPrefix": args.name,
            "kubernetesVersion": args.kubernetes_version,
            "nodeResourceGroup": f"rg-{args.name}-nodes",
            # The system pool is inline because AKS cannot create a cluster without one and cannot replace it in
            # place; it only runs system pods (CriticalAddonsOnly) and the gateway's proxies (infra/ingress.py).
            "agentPoolProfiles": [
                containerservice.ManagedClusterAgentPoolProfileArgs(
                    name="system",
                    mode="System",
                    vm_size=args.system_vm_size,
                    count=args.system_node_count,
                    availability_zones=list(args.availability_zones) or None,
                    os_type="Linux",
                    os_sku="AzureLinux",
                    type="VirtualMachineScaleSets",
                    vnet_subnet_id=args.nodes_subnet_id,
                    node_taints=["{}={}:{}".format(*SYSTEM_TAINT)],
                    upgrade_settings=containerservice.AgentPoolUpgradeSettingsArgs(max_surge="33%"),
                )
            ],
            "enableRBAC": True,
            "aadProfile": containerservice.ManagedClusterAADProfileArgs(
                managed=True,
                enable_azure_rbac=True,
                tenant_id=args.tenant_id,
                admin_group_object_ids=list(args.admin_group_object_ids),
            ),
            "disableLocalAccounts": args.disable_local_accounts,
            "apiServerAccessProfile": containerservice.ManagedClusterAPIServerAccessProfileArgs(
                authorized_ip_ranges=list(args.api_server_authorized_ip_ranges) or None,
                enable_vnet_integration=True if vnet_integration else None,
                subnet_id=args.api_server_subnet_id if vnet_integration else None,
                enable_private_cluster=True if args.api_server_access == "private" else None,
            ),
            "oidcIssuerProfile": containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            "securityProfile": containerservice.ManagedClusterSecurityProfileArgs(
                workload_identity=containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True),
                image_cleaner=containerservice.ManagedClusterSecurityProfileImageCleanerArgs(
                    enabled=True, interval_hours=168
                ),
            ),
            "networkProfile": containerservice.ContainerServiceNetworkProfileArgs(
                network_plugin="azure",
                network_plugin_mode="overlay",
                network_dataplane="cilium",
                network_policy="cilium",
                pod_cidr=POD_CIDR,
                service_cidr=SERVICE_CIDR,
                dns_service_ip=DNS_SERVICE_IP,
                load_balancer_sku="standard",
                outbound_type="loadBalancer",
            ),
            "addonProfiles": {
                "omsagent": containerservice.ManagedClusterAddonProfileArgs(
                    enabled=True,
                    config={"logAnalyticsWorkspaceResourceID": args.workspace_id, "useAADAuth": "true"},
                ),
                "azureKeyvaultSecretsProvider": containerservice.ManagedClusterAddonProfileArgs(
                    enabled=True, config={"enableSecretRotation": "true", "rotationPollInterval": "2m"}
                ),
            },
            "autoUpgradeProfile": containerservice.ManagedClusterAutoUpgradeProfileArgs(
                upgrade_channel="patch", node_os_upgrade_channel="NodeImage"
            ),
            # Managed Prometheus: the node and cluster agents; what they scrape and where it goes is the data
            # collection rule that infra/managed_prometheus.py associates with the cluster.
            "azureMonitorProfile": containerservice.ManagedClusterAzureMonitorProfileArgs(
                metrics=containerservice.ManagedClusterAzureMonitorProfileMetricsArgs(enabled=True)
            ),
            "workloadAutoScalerProfile": containerservice.ManagedClusterWorkloadAutoScalerProfileArgs(
                keda=containerservice.ManagedClusterWorkloadAutoScalerProfileKedaArgs(enabled=True)
            ),
            # The application routing add-on with its Gateway API implementation (GatewayClass approuting-istio,
            # see infra/ingress.py) and the managed Gateway API CRDs it needs; its NGINX controller is not deployed.
            "ingressProfile": {
                "gatewayAPI": {"installation": "Standard"},
                "webAppRouting": {
                    "enabled": True,
                    "nginx": {"defaultIngressControllerType": "None"},
                    "gatewayAPIImplementations": {"appRoutingIstio": {"mode": "Enabled"}},
                },
            },
        }


def toleration(taint: tuple[str, str, str]) -> dict[str, str]:
    """The toleration of a (key, value, effect) taint."""
    key, value, effect = taint
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def azure_cli_kubeconfig(kubeconfig: str) -> str:
    """Rewrite AKS's exec kubeconfig to get tokens from the Azure CLI login instead of an interactive device code.

    That is what works both on a laptop after `az login` and in CI after `azure/login`; it needs `kubelogin` on PATH.
    """
    config: dict[str, Any] = yaml.safe_load(kubeconfig)
    for user in config.get("users", []):
        exec_ = user.get("user", {}).get("exec")
        if not exec_ or exec_.get("command") != "kubelogin":
            continue
        args: list[str] = exec_.get("args", [])
        server_id = args[args.index("--server-id") + 1]
        exec_["args"] = ["get-token", "--login", "azurecli", "--server-id", server_id]
    return yaml.safe_dump(config, sort_keys=False)
