"""PostgreSQL Flexible Server, injected into its own delegated subnet: it has no public endpoint in any stack.

The admin password is generated here and leaves Pulumi only as Key Vault secrets (the password itself and a full
connection URL); in the state and in every output it is a Pulumi secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_azure_native import dbforpostgresql

from infra.network import POSTGRES_PORT
from infra.vault import VaultItem, store_secret

ADMIN_LOGIN = "ggufadmin"
DATABASE_NAME = "ggufstack"

# Server parameters that make the TLS floor explicit rather than a default that could drift.
TLS_PARAMETERS = {"require_secure_transport": "on", "ssl_min_protocol_version": "TLSv1.2"}


@dataclass(frozen=True)
class DatabaseArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    subnet_id: pulumi.Input[str]
    dns_zone_id: pulumi.Input[str]
    sku: str
    tier: str
    version: str
    storage_gb: int
    high_availability: bool
    backup_retention_days: int
    availability_zones: Sequence[str]
    vault_name: pulumi.Input[str]
    tags: Mapping[str, str]


class Database(pulumi.ComponentResource):
    server_id: pulumi.Output[str]
    fqdn: pulumi.Output[str]
    database_name: str

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # URL-safe specials only, so the password can sit in a connection URL without escaping.
        password = random.RandomPassword(
            f"{name}-admin-password",
            length=32,
            special=True,
            override_special="-_",
            min_lower=2,
            min_upper=2,
            min_numeric=2,
            min_special=2,
            opts=child,
        )
        # The provider marks `result` secret; wrapping it here keeps that true whatever the provider does.
        admin_password = pulumi.Output.secret(password.result)
        zones = list(args.availability_zones)
        server = dbforpostgresql.Server(
            f"psql-{args.name}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            version=args.version,
            sku=dbforpostgresql.SkuArgs(name=args.sku, tier=args.tier),
            storage=dbforpostgresql.StorageArgs(storage_size_gb=args.storage_gb, auto_grow="Enabled"),
            administrator_login=ADMIN_LOGIN,
            administrator_login_password=admin_password,
            auth_config=dbforpostgresql.AuthConfigArgs(
                password_auth="Enabled",  # noqa: S106 - a switch, not a password
                active_directory_auth="Disabled",
            ),
            network=dbforpostgresql.NetworkArgs(
                delegated_subnet_resource_id=args.subnet_id,
                private_dns_zone_arm_resource_id=args.dns_zone_id,
                public_network_access="Disabled",
            ),
            backup=dbforpostgresql.BackupArgs(
                backup_retention_days=args.backup_retention_days, geo_redundant_backup="Disabled"
            ),
            high_availability=dbforpostgresql.HighAvailabilityArgs(
                mode="ZoneRedundant" if args.high_availability else "Disabled",
                standby_availability_zone=zones[1] if args.high_availability and len(zones) > 1 else None,
            ),
            availability_zone=zones[0] if zones else None,
            tags=args.tags,
            opts=child,
        )
        database = dbforpostgresql.Database(
            f"{name}-app",
            database_name=DATABASE_NAME,
            server_name=server.name,
            resource_group_name=args.resource_group_name,
            charset="UTF8",
            collation="en_US.utf8",
            opts=child,
        )
        # Server parameter writes are serialized: Azure rejects a second one while the first is in progress.
        previous: pulumi.Resource = database
        for parameter, value in TLS_PARAMETERS.items():
            previous = dbforpostgresql.Configuration(
                f"{name}-{parameter.replace('_', '-')}",
                configuration_name=parameter,
                server_name=server.name,
                resource_group_name=args.resource_group_name,
                value=value,
                source="user-override",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )

        url = pulumi.Output.format(
            "postgresql://{0}:{1}@{2}:{3}/{4}?sslmode=require",
            ADMIN_LOGIN,
            admin_password,
            server.fully_qualified_domain_name,
            POSTGRES_PORT,
            database.name,
        )
        store_secret(
            f"{name}-admin-password-secret",
            item=VaultItem.POSTGRES_ADMIN_CREDENTIAL,
            value=admin_password,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )
        store_secret(
            f"{name}-url-secret",
            item=VaultItem.DATABASE_URL,
            value=url,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )

        self.server_id = server.id
        self.fqdn = server.fully_qualified_domain_name
        self.database_name = DATABASE_NAME
        self.register_outputs({"server_id": self.server_id, "fqdn": self.fqdn})
