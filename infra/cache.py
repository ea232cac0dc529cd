"""Azure Managed Redis (the `redisenterprise` resource provider): TLS only, Entra tokens or an access key.

With Entra authentication the server's workload identity holds the database's default access policy and AUTHs with
its object id as the user name and an Entra token as the password; the `rediss://` URL in Key Vault names the user
and holds no secret. Where a stack keeps access keys, the key is read back from Azure after the database exists and
stored as a Key Vault secret, both on its own and in the URL; in the Pulumi state it is a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import pulumi
from pulumi.output import UNKNOWN
from pulumi_azure_native import redisenterprise

from infra.network import REDIS_PORT, PrivateEndpointTarget, private_endpoint
from infra.vault import REDIS_ACCESS_KEY, store_secret
from server.config.settings import KEY_VAULT_SECRETS

# Azure Managed Redis has exactly one database per cluster and it must be called "default".
DATABASE = "default"
# The built-in access policy with full data access; the only one Azure Managed Redis offers.
ACCESS_POLICY = "default"


@dataclass(frozen=True)
class CacheArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    sku: str
    vault_name: pulumi.Input[str]
    # None keeps the cache reachable over its public endpoint (TLS and the access key still required).
    private_endpoint: PrivateEndpointTarget | None
    access_keys: bool
    # The principal that AUTHs with an Entra token; None: the server uses the access key.
    entra_object_id: pulumi.Input[str] | None
    tags: Mapping[str, str]


class Cache(pulumi.ComponentResource):
    cluster_id: pulumi.Output[str]
    database_id: pulumi.Output[str]
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
            # Every key the server writes has a TTL; under memory pressure the least recently used go, whichever use
            # wrote them, which is why each API key's cached answers have a budget (server/store/response_cache.py).
            # https://learn.microsoft.com/azure/redis/best-practices-memory-management
            eviction_policy="AllKeysLRU",
            access_keys_authentication="Enabled" if args.access_keys else "Disabled",
            opts=child,
        )
        if args.entra_object_id is None and not args.access_keys:
            raise ValueError("a cache without access keys needs an Entra principal")
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

        if args.entra_object_id is not None:
            redisenterprise.AccessPolicyAssignment(
                f"{name}-server-access",
                access_policy_assignment_name="ggufstackserver",
                access_policy_name=ACCESS_POLICY,
                cluster_name=cluster.name,
                database_name=database.name,
                resource_group_name=args.resource_group_name,
                user=redisenterprise.AccessPolicyAssignmentPropertiesUserArgs(object_id=args.entra_object_id),
                opts=child,
            )
            url = pulumi.Output.format("rediss://{0}@{1}:{2}/0", args.entra_object_id, cluster.host_name, REDIS_PORT)
        if args.access_keys:
            access_key = pulumi.Output.secret(self._access_key(cluster, database, args))
            store_secret(
                f"{name}-access-key-secret",
                secret_name=REDIS_ACCESS_KEY,
                value=access_key,
                vault_name=args.vault_name,
                resource_group_name=args.resource_group_name,
                parent=self,
                known_only_at_apply=True,
            )
            if args.entra_object_id is None:
                # Keys are base64 and may contain '/', which must be escaped in a URL's userinfo.
                url = pulumi.Output.all(access_key, cluster.host_name).apply(
                    lambda parts: f"rediss://:{quote(parts[0], safe='')}@{parts[1]}:{REDIS_PORT}/0"
                )
        store_secret(
            f"{name}-url-secret",
            secret_name=KEY_VAULT_SECRETS["redis_url"],
            value=url,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
            known_only_at_apply=args.entra_object_id is None,
        )

        self.cluster_id = cluster.id
        self.database_id = database.id
        self.host_name = cluster.host_name
        self.port = REDIS_PORT
        self.register_outputs({"cluster_id": self.cluster_id, "host_name": self.host_name})

    @staticmethod
    def _access_key(
        cluster: redisenterprise.RedisEnterprise, database: redisenterprise.Database, args: CacheArgs
    ) -> pulumi.Output[str]:
        # Listing keys is an action a Reader may not take, and pull requests preview as one: in a preview the key is
        # left unknown (the secrets that hold it show no change), and only `up` reads it.
        if pulumi.runtime.is_dry_run():
            return pulumi.Output.from_input(UNKNOWN)
        keys = redisenterprise.list_database_keys_output(
            cluster_name=cluster.name, database_name=database.name, resource_group_name=args.resource_group_name
        )
        return keys.primary_key
