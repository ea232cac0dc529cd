"""Deployment facts the mocks cannot see, checked on both stacks: what must exist, be permitted or be supported
before `pulumi up` reaches a step, so a first deployment against a real subscription does not stop there.

Each invariant names the documentation page it rests on. They are written against what the program declares (kinds,
taints, mounts, role assignments, versions, names), not against how a component happens to build it, so a new
component that breaks one fails here.
"""

from __future__ import annotations

from datetime import date

from infra import aks_versions
from infra.roles import NETWORK_CONTRIBUTOR
from tests.infra.harness import StackRun

_AGENT_POOL = "azure-native:containerservice:AgentPool"


def _role(stack: StackRun, role: str) -> list:
    return [
        r
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
        if r.plain["roleDefinitionId"].endswith(f"/roleDefinitions/{role}")
    ]


def test_kubernetes_version_is_supported_on_the_date_of_the_run(stack: StackRun) -> None:
    """ "Supported Kubernetes versions in Azure Kubernetes Service (AKS)", AKS Kubernetes release calendar
    (https://learn.microsoft.com/azure/aks/supported-kubernetes-versions): AKS creates clusters only on supported
    minors, and the Free and Standard tiers have no long-term support past a minor's end of life."""
    supported = [m.version for m in aks_versions.supported(date.today())]
    cluster = stack.managed_cluster().plain
    versions = [cluster["kubernetesVersion"]]
    versions += [p["orchestratorVersion"] for p in (r.plain for r in stack.of_type(_AGENT_POOL))]
    for version in versions:
        assert aks_versions.minor_of(version) in supported, f"{version} is not among {supported} on {date.today()}"


def test_control_plane_identity_can_join_every_subnet_the_cluster_uses_before_it_is_created(
    stack: StackRun,
) -> None:
    """ "Use a managed identity in AKS" (https://learn.microsoft.com/azure/aks/use-managed-identity) and "API Server
    VNet Integration" (https://learn.microsoft.com/azure/aks/api-server-vnet-integration): a user-assigned control
    plane identity needs Network Contributor on every custom subnet (nodes and the API server's); without it on the
    API server subnet, cluster provisioning fails."""
    cluster = stack.managed_cluster()
    (identity_id,) = cluster.plain["identity"]["userAssignedIdentities"]
    principal = next(r for r in stack.registrations if r.id == identity_id).outputs["principalId"]
    subnets = {p["vnetSubnetID"] for p in cluster.plain["agentPoolProfiles"]}
    subnets |= {r.plain["vnetSubnetID"] for r in stack.of_type(_AGENT_POOL)}
    if subnet := cluster.plain["apiServerAccessProfile"].get("subnetId"):
        subnets.add(subnet)
    grants = [r for r in _role(stack, NETWORK_CONTRIBUTOR) if r.plain["principalId"] == principal]
    for subnet in subnets:
        covering = [g for g in grants if subnet == g.plain["scope"] or subnet.startswith(g.plain["scope"] + "/")]
        assert covering, f"the control plane may not join {subnet}"
        assert any(g.urn in cluster.dependencies for g in covering), f"{subnet}'s grant may come after the cluster"
