"""Moving code never replaces what a deployed stack holds.

`deployed_urns.json` lists the URN of every resource the dev and prod programs declared before resources moved
between components (issue 20's layout). Each must still be declared, or be an alias of the resource that took its
place (infra/moved.py): without one, Pulumi would create the moved resource anew and delete the old one. A resource
that goes away on purpose leaves the list in the same change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.infra.harness import StackRun

DEPLOYED: dict[str, list[str]] = json.loads((Path(__file__).parent / "deployed_urns.json").read_text())


def test_every_deployed_resource_is_still_declared_or_aliased(stack: StackRun) -> None:
    declared = {r.urn for r in stack.registrations}
    aliased = {alias for r in stack.registrations for alias in r.aliases}
    lost = [urn for urn in DEPLOYED[stack.stack] if urn not in declared | aliased]
    assert not lost, lost


def test_no_alias_claims_a_resource_that_is_still_declared(stack: StackRun) -> None:
    declared = {r.urn for r in stack.registrations}
    aliases = [alias for r in stack.registrations for alias in r.aliases]
    assert len(aliases) == len(set(aliases)), "two resources claim one old URN"
    assert not set(aliases) & declared


# What moved where: (type, new name) -> the URN it had, after `urn:pulumi:<stack>::ggufstack::`.
MOVED = {
    ("random:index/randomPassword:RandomPassword", "admin-key-admin-api-key"): (
        "ggufstack:infra:Vault$random:index/randomPassword:RandomPassword::vault-admin-api-key"
    ),
    ("azure-native:keyvault:Secret", "admin-key-admin-api-key"): (
        "ggufstack:infra:Vault$azure-native:keyvault:Secret::vault-admin-api-key"
    ),
    ("pulumi:providers:kubernetes", "cluster-kubernetes"): (
        "ggufstack:infra:Workload$pulumi:providers:kubernetes::workload-aks"
    ),
    ("azure-native:containerservice:AgentPool", "gpu-pool-nodes"): (
        "ggufstack:infra:Cluster$azure-native:containerservice:AgentPool::cluster-gpu"
    ),
    ("kubernetes:apps/v1:DaemonSet", "gpu-pool-nvidia-device-plugin"): (
        "ggufstack:infra:Workload$kubernetes:apps/v1:DaemonSet::workload-nvidia-device-plugin"
    ),
    ("kubernetes:networking.k8s.io/v1:NetworkPolicy", "gpu-pool-nvidia-device-plugin-isolation"): (
        "ggufstack:infra:Workload$kubernetes:networking.k8s.io/v1:NetworkPolicy::workload-nvidia-device-plugin-isolation"
    ),
    ("azure-native:managedidentity:UserAssignedIdentity", "identities-server"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:UserAssignedIdentity::cluster-server"
    ),
    ("azure-native:managedidentity:FederatedIdentityCredential", "identities-server-federation"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:FederatedIdentityCredential::cluster-server-federation"
    ),
    ("azure-native:managedidentity:UserAssignedIdentity", "identities-keda"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:UserAssignedIdentity::cluster-keda"
    ),
    ("azure-native:managedidentity:FederatedIdentityCredential", "identities-keda-federation"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:FederatedIdentityCredential::cluster-keda-federation"
    ),
    ("azure-native:managedidentity:UserAssignedIdentity", "identities-database-admin"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:UserAssignedIdentity::cluster-database-admin"
    ),
    ("azure-native:managedidentity:FederatedIdentityCredential", "identities-database-admin-federation"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:FederatedIdentityCredential::cluster-database-admin-federation"
    ),
    ("azure-native:managedidentity:UserAssignedIdentity", "identities-certificate-reader"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:UserAssignedIdentity::cluster-certificate-reader"
    ),
    ("azure-native:managedidentity:FederatedIdentityCredential", "identities-certificate-reader-federation"): (
        "ggufstack:infra:Cluster$azure-native:managedidentity:FederatedIdentityCredential::cluster-certificate-reader-federation"
    ),
    ("azure-native:authorization:RoleAssignment", "identities-server-blob-reader"): (
        "ggufstack:infra:Cluster$azure-native:authorization:RoleAssignment::cluster-server-blob-reader"
    ),
    ("azure-native:authorization:RoleAssignment", "identities-server-secrets-user"): (
        "ggufstack:infra:Cluster$azure-native:authorization:RoleAssignment::cluster-server-secrets-user"
    ),
    ("azure-native:authorization:RoleAssignment", "identities-certificate-secrets-user"): (
        "ggufstack:infra:Cluster$azure-native:authorization:RoleAssignment::cluster-certificate-secrets-user"
    ),
}


@pytest.mark.parametrize(("key", "old"), MOVED.items(), ids=[f"{t.rsplit(':', 1)[1]}:{n}" for t, n in MOVED])
def test_each_moved_resource_keeps_its_old_urn_as_an_alias(stack: StackRun, key: tuple[str, str], old: str) -> None:
    moved = [r for r in stack.registrations if (r.type, r.name) == key]
    if not moved:
        # Declared only in some stacks (e.g. the certificate reader, with an ingress); never under another name.
        assert f"urn:pulumi:{stack.stack}::ggufstack::{old}" not in DEPLOYED[stack.stack]
        return
    (resource,) = moved
    assert f"urn:pulumi:{stack.stack}::ggufstack::{old}" in resource.aliases
