"""The storage account and the `models` container the server downloads its GGUF file from.

Blob versioning plus soft delete is the rollback mechanism: overwriting a model keeps the previous version, and
promoting it back is a copy of that version onto the current blob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import storage

from infra.network import PrivateEndpointTarget, private_endpoint

MODELS_CONTAINER = "models"
RETENTION_DAYS = 14


@dataclass(frozen=True)
class StorageArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    sku: str
    shared_key_access: bool
    # None keeps the account reachable over its public endpoint (Entra ID auth still required).
    private_endpoint: PrivateEndpointTarget | None
    tags: Mapping[str, str]


class Storage(pulumi.ComponentResource):
    account_id: pulumi.Output[str]
    account_name: pulumi.Output[str]
    blob_endpoint: pulumi.Output[str]
    container_id: pulumi.Output[str]
    container_name: str
    container_url: pulumi.Output[str]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Storage", name, None, opts)
        private = args.private_endpoint is not None
        account = storage.StorageAccount(
            # Account names are global, alphanumeric and at most 24 characters; Pulumi appends 8 random ones to this.
            f"st{args.name.replace('-', '')[:14]}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="StorageV2",
            sku=storage.SkuArgs(name=args.sku),
            access_tier="Hot",
            allow_blob_public_access=False,
            allow_shared_key_access=args.shared_key_access,
            default_to_o_auth_authentication=True,
            allow_cross_tenant_replication=False,
            minimum_tls_version="TLS1_2",
            enable_https_traffic_only=True,
            public_network_access="Disabled" if private else "Enabled",
            network_rule_set=storage.NetworkRuleSetArgs(
                default_action="Deny" if private else "Allow", bypass="AzureServices"
            ),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        blob_service = storage.BlobServiceProperties(
            f"{name}-blob-service",
            account_name=account.name,
            resource_group_name=args.resource_group_name,
            blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy=storage.DeleteRetentionPolicyArgs(enabled=True, days=RETENTION_DAYS),
            container_delete_retention_policy=storage.DeleteRetentionPolicyArgs(enabled=True, days=RETENTION_DAYS),
            opts=pulumi.ResourceOptions(parent=self),
        )
        container = storage.BlobContainer(
            f"{name}-models",
            account_name=account.name,
            resource_group_name=args.resource_group_name,
            container_name=MODELS_CONTAINER,
            public_access="None",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[blob_service]),
        )
        if args.private_endpoint is not None:
            private_endpoint(
                f"{name}-blob",
                resource_group_name=args.resource_group_name,
                location=args.location,
                subnet_id=args.private_endpoint.subnet_id,
                target_id=account.id,
                group_id="blob",
                dns_zone_id=args.private_endpoint.dns_zone_id,
                tags=args.tags,
                parent=self,
            )

        self.account_id = account.id
        self.account_name = account.name
        self.blob_endpoint = account.primary_endpoints.apply(lambda e: e.blob)
        self.container_id = container.id
        self.container_name = MODELS_CONTAINER
        self.container_url = pulumi.Output.concat(self.blob_endpoint, MODELS_CONTAINER)
        self.register_outputs(
            {
                "account_id": self.account_id,
                "account_name": self.account_name,
                "blob_endpoint": self.blob_endpoint,
                "container_id": self.container_id,
                "container_url": self.container_url,
            }
        )
