"""The Azure identities of the cluster's workloads, and what each may do.

Pods authenticate to Azure as user-assigned identities through workload identity: the cluster's OIDC issuer signs a
service account's token, and a federated credential trusts exactly that service account. The server's identity may
read the `models` container and the vault's secrets; KEDA's queries the metrics (infra/managed_prometheus.py grants
it); the database bootstrap's is an Entra administrator of PostgreSQL (infra/database.py); the ingress certificate's
reader may read the vault, with an identity of its own so that the ingress namespace never holds the server's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import managedidentity

from infra.moved import CLUSTER, moved_from
from infra.roles import KEY_VAULT_SECRETS_USER, STORAGE_BLOB_DATA_READER, service_principal_role

WORKLOAD_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"
# The AKS KEDA add-on's operator; it authenticates its scalers' queries as this service account.
KEDA_NAMESPACE = "kube-system"
KEDA_SERVICE_ACCOUNT = "keda-operator"


@dataclass(frozen=True)
class ServiceAccountRef:
    """A Kubernetes service account an Azure identity of the stack is federated with."""

    namespace: str
    service_account: str


@dataclass(frozen=True)
class ServerIdentity:
    """The Kubernetes service account the server runs as, and what its Azure identity may read."""

    namespace: str
    service_account: str
    models_container_id: pulumi.Input[str]
    vault_id: pulumi.Input[str]


@dataclass(frozen=True)
class IdentitiesArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    subscription_id: pulumi.Input[str]
    oidc_issuer_url: pulumi.Input[str]
    server: ServerIdentity
    # The pod that syncs the ingress certificate from the vault (infra/ingress.py); None without an ingress.
    certificate_reader: ServiceAccountRef | None
    # The job that creates the server's database role (infra/database_bootstrap.py); None with password auth.
    database_bootstrap: ServiceAccountRef | None
    tags: Mapping[str, str]


class Identities(pulumi.ComponentResource):
    server_client_id: pulumi.Output[str]
    server_principal_id: pulumi.Output[str]
    server_identity_name: pulumi.Output[str]
    keda_client_id: pulumi.Output[str]
    keda_principal_id: pulumi.Output[str]
    certificate_reader_client_id: pulumi.Output[str] | None
    # The database-bootstrap identity: an Entra administrator of PostgreSQL, used only by the bootstrap job.
    database_admin: managedidentity.UserAssignedIdentity | None

    def __init__(self, name: str, args: IdentitiesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Identities", name, None, opts)
        self._name, self._args = name, args

        server = self._identity(
            "server", "server", ServiceAccountRef(args.server.namespace, args.server.service_account)
        )
        keda = self._identity("keda", "keda", ServiceAccountRef(KEDA_NAMESPACE, KEDA_SERVICE_ACCOUNT))
        self._role("server-blob-reader", args.server.models_container_id, STORAGE_BLOB_DATA_READER, server)
        self._role("server-secrets-user", args.server.vault_id, KEY_VAULT_SECRETS_USER, server)

        self.database_admin = None
        if args.database_bootstrap is not None:
            self.database_admin = self._identity("database-admin", "db-admin", args.database_bootstrap)
        self.certificate_reader_client_id = None
        if args.certificate_reader is not None:
            # Key Vault Secrets User is how a certificate is read with its private key.
            reader = self._identity("certificate-reader", "tls", args.certificate_reader)
            self._role("certificate-secrets-user", args.server.vault_id, KEY_VAULT_SECRETS_USER, reader)
            self.certificate_reader_client_id = reader.client_id

        self.server_client_id = server.client_id
        self.server_principal_id = server.principal_id
        self.server_identity_name = server.name
        self.keda_client_id = keda.client_id
        self.keda_principal_id = keda.principal_id
        self.register_outputs({"server_client_id": self.server_client_id, "keda_client_id": self.keda_client_id})

    def _opts(self, purpose: str) -> pulumi.ResourceOptions:
        # These resources were the cluster component's, under the same purpose.
        return pulumi.ResourceOptions(parent=self, aliases=[moved_from(CLUSTER, purpose)])

    def _identity(self, purpose: str, suffix: str, account: ServiceAccountRef) -> managedidentity.UserAssignedIdentity:
        """A user-assigned identity `id-<name>-<suffix>`, federated with `account` alone."""
        args = self._args
        identity = managedidentity.UserAssignedIdentity(
            f"{self._name}-{purpose}",
            resource_name_=f"id-{args.name}-{suffix}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            tags=args.tags,
            opts=self._opts(purpose),
        )
        managedidentity.FederatedIdentityCredential(
            f"{self._name}-{purpose}-federation",
            federated_identity_credential_resource_name=f"{account.namespace}-{account.service_account}",
            resource_name_=identity.name,
            resource_group_name=args.resource_group_name,
            issuer=args.oidc_issuer_url,
            subject=f"system:serviceaccount:{account.namespace}:{account.service_account}",
            audiences=[WORKLOAD_IDENTITY_AUDIENCE],
            opts=self._opts(f"{purpose}-federation"),
        )
        return identity

    def _role(
        self, purpose: str, scope: pulumi.Input[str], role: str, identity: managedidentity.UserAssignedIdentity
    ) -> None:
        service_principal_role(
            f"{self._name}-{purpose}",
            scope=scope,
            role=role,
            principal_id=identity.principal_id,
            subscription_id=self._args.subscription_id,
            opts=self._opts(purpose),
        )
