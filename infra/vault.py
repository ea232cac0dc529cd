"""Key Vault: the one place the stack's generated credentials live (database URL, Redis credentials, admin API key),
written by the components that make them.

Secrets are written through Azure Resource Manager, which the vault's firewall does not apply to, so `pulumi up`
works from outside the VNet even when the vault has no public network access. The pod reads them through the Key
Vault secrets provider with its workload identity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import keyvault

from infra.network import PrivateEndpointTarget, private_endpoint

# The secrets that hold a server setting are named once, in server/config/settings.py (KEY_VAULT_SECRETS): the
# components that write them, the pod's secrets mount and the server's own vault reader all take the names from there.
# These two are credentials for people, kept only where the stack allows passwords and keys; no setting reads them.
POSTGRES_ADMIN_CREDENTIAL = "postgres-admin-password"
REDIS_ACCESS_KEY = "redis-access-key"


@dataclass(frozen=True)
class VaultArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    tenant_id: pulumi.Input[str]
    purge_protection: bool
    # None keeps the vault reachable over its public endpoint (Entra ID auth still required).
    private_endpoint: PrivateEndpointTarget | None
    tags: Mapping[str, str]


class Vault(pulumi.ComponentResource):
    vault_id: pulumi.Output[str]
    vault_name: pulumi.Output[str]
    vault_uri: pulumi.Output[str]

    def __init__(self, name: str, args: VaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Vault", name, None, opts)
        private = args.private_endpoint is not None
        vault = keyvault.Vault(
            # Vault names are global and at most 24 characters; Pulumi appends an 8-character random suffix to this.
            f"kv-{args.name}"[:16],
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.tenant_id,
                sku=keyvault.SkuArgs(family="A", name="standard"),
                enable_rbac_authorization=True,
                enable_soft_delete=True,
                soft_delete_retention_in_days=90,
                # Azure refuses an explicit false: once on, purge protection cannot be turned off, so "off" is unset.
                enable_purge_protection=True if args.purge_protection else None,
                enabled_for_deployment=False,
                enabled_for_disk_encryption=False,
                enabled_for_template_deployment=False,
                public_network_access="Disabled" if private else "Enabled",
                network_acls=keyvault.NetworkRuleSetArgs(
                    default_action="Deny" if private else "Allow", bypass="AzureServices"
                ),
            ),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        if args.private_endpoint is not None:
            private_endpoint(
                f"{name}-kv",
                resource_group_name=args.resource_group_name,
                location=args.location,
                subnet_id=args.private_endpoint.subnet_id,
                target_id=vault.id,
                group_id="vault",
                dns_zone_id=args.private_endpoint.dns_zone_id,
                tags=args.tags,
                parent=self,
            )

        self.vault_id = vault.id
        self.vault_name = vault.name
        self.vault_uri = vault.properties.apply(lambda p: p.vault_uri)
        self.register_outputs({"vault_id": self.vault_id, "vault_name": self.vault_name, "vault_uri": self.vault_uri})


def store_secret(
    name: str,
    *,
    secret_name: str,
    value: pulumi.Input[str],
    vault_name: pulumi.Input[str],
    resource_group_name: pulumi.Input[str],
    parent: pulumi.Resource,
    known_only_at_apply: bool = False,
    aliases: Sequence[pulumi.Alias] = (),
) -> keyvault.Secret:
    """Write `value` to the vault as `secret_name`; the value is always handled as a Pulumi secret.

    `known_only_at_apply`: the value is unknown in previews, which then keep the stored one rather than show a change.
    """
    ignore = ["properties.value"] if known_only_at_apply and pulumi.runtime.is_dry_run() else None
    return keyvault.Secret(
        name,
        secret_name=secret_name,
        vault_name=vault_name,
        resource_group_name=resource_group_name,
        properties=keyvault.SecretPropertiesArgs(value=pulumi.Output.secret(value)),
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=ignore, aliases=list(aliases) or None),
    )


def secret_provider_objects(objects: list[dict[str, str]]) -> str:
    """A SecretProviderClass's `objects` parameter: the driver parses it as YAML, an array of JSON strings (JSON is
    YAML, so no YAML library is needed)."""
    return json.dumps({"array": [json.dumps(o) for o in objects]})
