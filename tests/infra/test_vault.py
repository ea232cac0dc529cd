"""Key Vault: the stack's secrets, named once.

`KEY_VAULT_SECRETS` (server/config/settings.py) pairs each secret setting with its vault secret. The components
write those secrets under those names, the pod mounts them as files named like the settings' variables, and the
server reads them from the vault elsewhere; these tests hold the three to the one mapping.
"""

from __future__ import annotations

import json

import pytest

from server.config.settings import KEY_VAULT_SECRETS, Settings
from tests.infra.harness import TENANT_ID, StackRun, is_secret

# The names deployed vaults hold: renaming one would leave running pods mounting a secret that is gone.
VAULT_SECRETS = {"admin-api-key", "database-url", "redis-url", "applicationinsights-connection-string"}
# Credentials for people, kept only where the stack allows passwords and keys (not in production).
KEY_SECRETS = {"postgres-admin-password", "redis-access-key"}


def _secret_value(stack: StackRun, name: str) -> str:
    (secret,) = [r for r in stack.of_type("azure-native:keyvault:Secret") if r.plain["secretName"] == name]
    return secret.plain["properties"]["value"]


def test_the_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        KEY_VAULT_SECRETS["database_url"] = "elsewhere"  # type: ignore[index]  # the point: it refuses


def test_every_mapped_setting_is_a_secret_setting_with_its_own_vault_secret() -> None:
    assert all(Settings.is_secret(field) for field in KEY_VAULT_SECRETS)
    assert len(set(KEY_VAULT_SECRETS.values())) == len(KEY_VAULT_SECRETS)
    assert set(KEY_VAULT_SECRETS.values()) == VAULT_SECRETS


def test_the_stack_writes_exactly_the_mapped_secrets_besides_the_people_credentials(stack: StackRun) -> None:
    written = {r.plain["secretName"] for r in stack.of_type("azure-native:keyvault:Secret")}
    assert written - KEY_SECRETS == set(KEY_VAULT_SECRETS.values())


def test_the_pod_mounts_every_mapped_secret_as_its_settings_variable(stack: StackRun) -> None:
    (provider_class,) = [
        obj
        for _, obj in stack.kubernetes_objects()
        if obj["kind"] == "SecretProviderClass" and obj["metadata"]["namespace"] == "ggufstack"
    ]
    objects = [json.loads(o) for o in json.loads(provider_class["spec"]["parameters"]["objects"])["array"]]
    assert objects == [
        {"objectName": secret, "objectType": "secret", "objectAlias": Settings.env_name(field)}
        for field, secret in KEY_VAULT_SECRETS.items()
    ]


def test_vault_uses_rbac_and_soft_delete(stack: StackRun) -> None:
    properties = stack.one("azure-native:keyvault:Vault").plain["properties"]
    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["softDeleteRetentionInDays"] == 90
    assert properties["tenantId"] == TENANT_ID
    assert not properties.get("accessPolicies")
    assert not any(properties[k] for k in ("enabledForDeployment", "enabledForTemplateDeployment"))


def test_prod_vault_is_purge_protected_and_private(prod: StackRun) -> None:
    properties = prod.one("azure-native:keyvault:Vault").plain["properties"]
    assert properties["enablePurgeProtection"] is True
    assert properties["publicNetworkAccess"] == "Disabled"
    assert properties["networkAcls"]["defaultAction"] == "Deny"


def test_dev_vault_leaves_purge_protection_unset_as_azure_requires(dev: StackRun) -> None:
    # Azure rejects an explicit false; unset is how a vault without purge protection is declared.
    assert "enablePurgeProtection" not in dev.one("azure-native:keyvault:Vault").plain["properties"]


def test_vault_holds_the_generated_credentials_as_pulumi_secrets(stack: StackRun) -> None:
    vault = stack.one("azure-native:keyvault:Vault").state["name"]
    secrets = stack.of_type("azure-native:keyvault:Secret")
    assert {r.plain["secretName"] for r in secrets} == VAULT_SECRETS | (set() if stack.cfg.production else KEY_SECRETS)
    for r in secrets:
        assert r.plain["vaultName"] == vault
        assert is_secret(r.inputs["properties"]), f"{r.plain['secretName']} must reach the engine as a secret"


def test_admin_api_key_is_generated(stack: StackRun) -> None:
    (key,) = [r for r in stack.of_type("random:index/randomPassword:RandomPassword") if "api-key" in r.name]
    assert key.plain["length"] >= 32
    assert _secret_value(stack, "admin-api-key") == key.state["result"]
