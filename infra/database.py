"""PostgreSQL Flexible Server, injected into its own delegated subnet: it has no public endpoint in any stack.

With Entra authentication the server's workload identity logs in with an access token as its password, as a plain
database role that may create tables in its database and nothing more; the connection URL in Key Vault names that role
and holds no password. The Entra administrators are the stack's database-bootstrap identity, which creates that role
and the database from inside the cluster (infra/database_bootstrap.py), and the admin group, for break-glass access.
Password authentication, where a stack
keeps it, uses a generated admin password that leaves Pulumi only as Key Vault secrets; in the state and in every
output it is a Pulumi secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_azure_native import dbforpostgresql

from infra.network import POSTGRES_PORT
from infra.vault import POSTGRES_ADMIN_CREDENTIAL, store_secret
from server.config.settings import KEY_VAULT_SECRETS

ADMIN_LOGIN = "ggufadmin"
DATABASE_NAME = "ggufstack"
# The role the admin group's members log in as (user name) for break-glass access, with their own Entra token.
ADMIN_GROUP_ROLE = "ggufstack-admins"

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
    geo_redundant_backup: bool
    vault_name: pulumi.Input[str]
    # Passwords on or off; with them off the server accepts only Entra tokens.
    password_auth: bool
    # The principal the server logs in as with an Entra token (a plain role, not an administrator); None: the server
    # uses the admin password.
    entra_principal: DatabasePrincipal | None
    # Entra administrators: the bootstrap identity that creates the server's role, and the admin group (break-glass).
    entra_administrators: Sequence[EntraAdministrator]
    tenant_id: pulumi.Input[str]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class EntraAdministrator:
    purpose: str
    object_id: pulumi.Input[str]
    # The role name inside PostgreSQL, which is also the user name an administrator logs in with.
    name: pulumi.Input[str]
    principal_type: str  # "ServicePrincipal" or "Group"


@dataclass(frozen=True)
class DatabasePrincipal:
    object_id: pulumi.Input[str]
    # The role name inside PostgreSQL: the identity's display name, which is also the user in the connection URL.
    name: pulumi.Input[str]


class Database(pulumi.ComponentResource):
    server_id: pulumi.Output[str]
    fqdn: pulumi.Output[str]
    database_name: str
    # The last administrator write: what creates roles and databases inside the server waits for it.
    administrators_ready: pulumi.Resource

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if args.entra_principal is None and not args.password_auth:
            raise ValueError("a database without password authentication needs an Entra principal")
        if args.entra_principal is not None and not args.entra_administrators:
            raise ValueError("an Entra principal is created by an Entra administrator; name one")
        admin_password: pulumi.Output[str] | None = None
        if args.password_auth:
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
            administrator_login=ADMIN_LOGIN if args.password_auth else None,
            administrator_login_password=admin_password,
            auth_config=dbforpostgresql.AuthConfigArgs(
                password_auth="Enabled" if args.password_auth else "Disabled",
                active_directory_auth="Enabled" if args.entra_principal is not None else "Disabled",
                tenant_id=args.tenant_id if args.entra_principal is not None else None,
            ),
            network=dbforpostgresql.NetworkArgs(
                delegated_subnet_resource_id=args.subnet_id,
                private_dns_zone_arm_resource_id=args.dns_zone_id,
                public_network_access="Disabled",
            ),
            backup=dbforpostgresql.BackupArgs(
                backup_retention_days=args.backup_retention_days,
                # A copy of the backups in the paired region: a restore there survives the loss of this one.
                geo_redundant_backup="Enabled" if args.geo_redundant_backup else "Disabled",
            ),
            high_availability=dbforpostgresql.HighAvailabilityArgs(
                mode="ZoneRedundant" if args.high_availability else "Disabled",
                standby_availability_zone=zones[1] if args.high_availability and len(zones) > 1 else None,
            ),
            availability_zone=zones[0] if zones else None,
            tags=args.tags,
            opts=child,
        )
        # Entra administrators first, one write at a time (Azure serializes a server's administrator and parameter
        # writes): a database created before any exists is owned by the platform's azuresu, useless to everyone.
        previous: pulumi.Resource = server
        for admin in args.entra_administrators:
            previous = dbforpostgresql.AdministratorsMicrosoftEntra(
                f"{name}-entra-admin-{admin.purpose}",
                object_id=admin.object_id,
                principal_name=admin.name,
                principal_type=admin.principal_type,
                tenant_id=args.tenant_id,
                server_name=server.name,
                resource_group_name=args.resource_group_name,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )
        self.administrators_ready = previous
        if args.entra_principal is None:
            # Password mode: the admin login is the server's login and owns the database ARM creates.
            previous = dbforpostgresql.Database(
                f"{name}-app",
                database_name=DATABASE_NAME,
                server_name=server.name,
                resource_group_name=args.resource_group_name,
                charset="UTF8",
                collation="en_US.utf8",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )
        # With Entra, the database and the server's own role are created in the cluster by an administrator
        # (infra/database_bootstrap.py), after these writes.
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

        if args.entra_principal is not None:
            # No password: the server sends an Entra access token for the role named here.
            url = pulumi.Output.format(
                "postgresql://{0}@{1}:{2}/{3}?sslmode=require",
                args.entra_principal.name,
                server.fully_qualified_domain_name,
                POSTGRES_PORT,
                DATABASE_NAME,
            )
        else:
            url = pulumi.Output.format(
                "postgresql://{0}:{1}@{2}:{3}/{4}?sslmode=require",
                ADMIN_LOGIN,
                admin_password,
                server.fully_qualified_domain_name,
                POSTGRES_PORT,
                DATABASE_NAME,
            )
        if admin_password is not None:
            store_secret(
                f"{name}-admin-password-secret",
                secret_name=POSTGRES_ADMIN_CREDENTIAL,
                value=admin_password,
                vault_name=args.vault_name,
                resource_group_name=args.resource_group_name,
                parent=self,
            )
        store_secret(
            f"{name}-url-secret",
            secret_name=KEY_VAULT_SECRETS["database_url"],
            value=url,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )

        self.server_id = server.id
        self.fqdn = server.fully_qualified_domain_name
        self.database_name = DATABASE_NAME
        self.register_outputs({"server_id": self.server_id, "fqdn": self.fqdn})
