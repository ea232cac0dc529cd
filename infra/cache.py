"""Azure Managed Redis (the `redisenterprise` resource provider): TLS only, access key kept in Key Vault.

The access key is read back from Azure after the database exists and is stored as a Key Vault secret, both on its
own and as a complete `rediss://` URL; in the Pulumi state it is a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import pulumi
from pulumi_azure_native import redisenterprise

from infra.network import REDIS_PORT, PrivateEndpointTarget, private_endpoint
from infra.vault import VaultItem, store_secret

# Azure Managed Redis has exactly one database per cluster and it must be called "default".
DATABASE = "default"


@dataclass(frozen=True)
class CacheArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    sku: str
    vault_name: pulumi.Input[str]
    # None keeps the cache reachable over its public endpoint (TLS and the access key still required).
    private_endpoint: PrivateEndpointTarget | None
    tags: Mapping[str, str]


class Cache(pulumi.ComponentResource):
    cluster_id: pulumi.Output[str]
    host_name: pulumi.Output[str]
    port: int

    def __init__(self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Cache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster = redisenterprise.RedisEnterprise(
            f"redis-{args.name}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=redisenterprise.SkuArgs(name=args.sku),
            minimum_tls_version="1.2",
            high_availability="Enabled",
            public_network_access="Disabled" if args.private_endpoint is not None else "Enabled",
            tags=args.tags,
            opts=child,
        )
        database = redisenterprise.Database(
            f"{name}-db",
            cluster_name=cluster.name,
            database_name=DATABASE,
            resource_group_name=args.resource_group_name,
            client_protocol="Encrypted",
            port=REDIS_PORT,
            # Non-clustered protocol, so ordinary (not cluster-aware) Redis clients work.
            clustering_policy="EnterpriseCluster",
            eviction_policy="AllKeysLRU",
            access_keys_authentication="Enabled",
            opts=child,
        )
        if args.private_endpoint is not None:
            private_endpoint(
                f"{name}-redis",
                resource_group_name=args.resource_group_name,
                location=args.location,
                subnet_id=args.private_endpoint.subnet_id,
                target_id=cluster.id,
                group_id="redisEnterprise",
                dns_zone_id=args.private_endpoint.dns_zone_id,
                tags=args.tags,
                parent=self,
            )

        keys = redisenterprise.list_database_keys_output(
            cluster_name=cluster.name, database_name=database.name, resource_group_name=args.resource_group_name
        )
        access_key = pulumi.Output.secret(keys.primary_key)
        # Keys are base64 and may contain '/', which must be escaped in a URL's userinfo.
        url = pulumi.Output.all(access_key, cluster.host_name).apply(
            lambda parts: f"rediss://:{quote(parts[0], safe='')}@{parts[1]}:{REDIS_PORT}/0"
        )
        store_secret(
            f"{name}-access-key-secret",
            item=VaultItem.REDIS_ACCESS_KEY,
            value=access_key,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )
        store_secret(
            f"{name}-url-secret",
            item=VaultItem.REDIS_URL,
            value=url,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )

        self.cluster_id = cluster.id
        self.host_name = cluster.host_name
        self.port = REDIS_PORT
        self.register_outputs({"cluster_id": self.cluster_id, "host_name": self.host_name})
