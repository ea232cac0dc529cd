"""The server's admin API key: generated once and written to Key Vault, where the pod's secrets mount reads it.

Its own component rather than the vault's: the vault holds the stack's secrets, and this is one of them, like the
database URL the Database component writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random

from infra.moved import VAULT, moved_from
from infra.vault import store_secret
from server.config.settings import KEY_VAULT_SECRETS

KEY_LENGTH = 48


@dataclass(frozen=True)
class AdminKeyArgs:
    vault_name: pulumi.Input[str]
    resource_group_name: pulumi.Input[str]


class AdminKey(pulumi.ComponentResource):
    def __init__(self, name: str, args: AdminKeyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:AdminKey", name, None, opts)
        key = random.RandomPassword(
            f"{name}-admin-api-key",
            length=KEY_LENGTH,
            special=False,
            # Without the alias, moving it out of the vault's component would mint a new key for every client.
            opts=pulumi.ResourceOptions(parent=self, aliases=[moved_from(VAULT, "admin-api-key")]),
        )
        store_secret(
            f"{name}-admin-api-key",
            secret_name=KEY_VAULT_SECRETS["admin_api_key"],
            value=key.result,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
            aliases=[moved_from(VAULT, "admin-api-key")],
        )
        self.register_outputs({})
