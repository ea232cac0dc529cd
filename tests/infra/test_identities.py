"""The workloads' Azure identities: each federated with exactly its service account, with exactly its rights."""

from __future__ import annotations

import pytest

from infra.roles import KEY_VAULT_SECRETS_USER, STORAGE_BLOB_DATA_READER
from tests.infra.harness import SUBSCRIPTION_ID, Registration, StackRun

# Each identity's purpose and the suffix of its Azure name.
SUFFIXES = {"server": "server", "keda": "keda", "database-admin": "db-admin", "certificate-reader": "tls"}


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


@pytest.mark.parametrize(
    ("purpose", "subject"),
    [
        ("server", "system:serviceaccount:ggufstack:ggufstack-server"),
        ("keda", "system:serviceaccount:kube-system:keda-operator"),
        ("database-admin", "system:serviceaccount:ggufstack:ggufstack-server-db-bootstrap"),
        ("certificate-reader", "system:serviceaccount:ggufstack-ingress:certificate-sync"),
    ],
)
def test_identities_are_federated_with_exactly_their_service_account(
    stack: StackRun, purpose: str, subject: str
) -> None:
    cluster = stack.managed_cluster().outputs
    identity = _identity(stack, SUFFIXES[purpose])
    credential = stack.one(
        "azure-native:managedidentity:FederatedIdentityCredential", f"identities-{purpose}-federation"
    ).plain
    assert credential["resourceName"] == identity.outputs["name"]
    assert credential["issuer"] == cluster["oidcIssuerProfile"]["issuerURL"]
    assert credential["subject"] == subject
    assert credential["audiences"] == ["api://AzureADTokenExchange"]


def test_server_identity_reads_only_the_models_container(stack: StackRun) -> None:
    container = stack.one("azure-native:storage:BlobContainer").id
    server = _identity(stack, "server")
    (reader,) = _assignments(stack, STORAGE_BLOB_DATA_READER)
    assert (reader["scope"], reader["principalId"], reader["principalType"]) == (
        container,
        server.outputs["principalId"],
        "ServicePrincipal",
    )


def test_server_identity_reads_the_vault_secrets(stack: StackRun) -> None:
    vault = stack.one("azure-native:keyvault:Vault").id
    server = _identity(stack, "server")
    principal = server.outputs["principalId"]
    (user,) = [a for a in _assignments(stack, KEY_VAULT_SECRETS_USER) if a["principalId"] == principal]
    assert (user["scope"], user["principalId"], user["principalType"]) == (
        vault,
        server.outputs["principalId"],
        "ServicePrincipal",
    )


def test_every_workload_identity_its_federation_and_rights_are_one_component(stack: StackRun) -> None:
    component = stack.one("ggufstack:infra:Identities").urn
    identities = [
        r for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity") if r.parent == component
    ]
    assert sorted(r.plain["resourceName"] for r in identities) == sorted(
        f"id-{stack.name}-{suffix}" for suffix in SUFFIXES.values()
    )
    federations = stack.of_type("azure-native:managedidentity:FederatedIdentityCredential")
    assert {r.parent for r in federations} == {component}
    rights = [r for r in stack.of_type("azure-native:authorization:RoleAssignment") if r.parent == component]
    assert sorted(r.name.removeprefix("identities-") for r in rights) == [
        "certificate-secrets-user",
        "server-blob-reader",
        "server-secrets-user",
    ]
