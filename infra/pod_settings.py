"""The server's settings as its pod receives them: plain settings as environment variables, secret ones as files.

Both speak the field names of the server's own settings model (server/config/settings.py): a stack passes settings
keyed by them, and the variables' and files' names come from `Settings`, so a setting renamed in the server cannot
silently stop reaching the pod; the program fails instead. Credentials never enter the environment: `KEY_VAULT_SECRETS`
names the vault secret of each secret setting, which the Key Vault secrets provider mounts as a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi_kubernetes import core

from server.config.settings import KEY_VAULT_SECRETS, Settings


def environment(
    settings: Mapping[str, pulumi.Input[Any]], *, layout: Mapping[str, Any]
) -> pulumi.Output[list[core.v1.EnvVarArgs]]:
    """The container's `env`: `settings` (a value of None leaves the server's default) and the pod's `layout`
    (addresses, ports and paths the pod's spec depends on, which a stack may not set), validated by the server's
    model. Listed in the order `Settings` declares its fields, so that how the program assembles them never changes
    the pod's spec (a changed spec rolls every replica)."""
    clash = sorted(set(settings) & set(layout))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the pod's layout, not by a stack")
    given = {field: value for field, value in {**settings, **layout}.items() if value is not None}
    # Checked here as well as in Settings.to_env, which runs only once every value is known (not in a preview).
    for field in given:
        Settings.env_name(field)  # a KeyError for a field the server does not have
        if Settings.is_secret(field):
            raise ValueError(f"{Settings.env_name(field)} is a secret: add it to KEY_VAULT_SECRETS instead")
    return pulumi.Output.all(**given).apply(_env)


def _env(values: dict[str, Any]) -> list[core.v1.EnvVarArgs]:
    env = Settings.to_env(**values)
    names = [Settings.env_name(field) for field in Settings.model_fields if field in values]
    return [core.v1.EnvVarArgs(name=name, value=env[name]) for name in names]


def secret_files() -> list[dict[str, str]]:
    """The SecretProviderClass's objects: each secret setting's vault secret, as a file named like its variable (the
    server reads its secrets directory by those names)."""
    return [
        {"objectName": secret, "objectType": "secret", "objectAlias": Settings.env_name(field)}
        for field, secret in KEY_VAULT_SECRETS.items()
    ]
