"""Secrets from Azure Key Vault, for hosts without the Key Vault CSI mount (a VM, a container app, a laptop with
`az login`): with GGUFSTACK_KEY_VAULT_URL set, each secret setting still unset after the environment and the mounted
secrets directory is read from the vault, under the name KEY_VAULT_SECRETS gives it, with DefaultAzureCredential.

Precedence, highest first: an explicit environment variable (or CLI option), a file in the secrets directory, Key
Vault. The explicit value wins because someone set it on purpose for this process; the mount beats the vault because
in AKS it *is* the vault, read by the CSI driver with the same identity, so asking again would only add a round trip.

Errors name the secret and the vault, never a value.
"""

from __future__ import annotations

import logging

from server.config.settings import KEY_VAULT_SECRETS, Settings, SettingsError

log = logging.getLogger(__name__)


def with_key_vault_secrets(settings: Settings) -> Settings:
    """`settings` with the unset secret settings filled from Key Vault; raises SettingsError (one line)."""
    if settings.key_vault_url is None:
        return settings
    missing = {field: name for field, name in KEY_VAULT_SECRETS.items() if getattr(settings, field) is None}
    if not missing:
        return settings
    from azure.core.exceptions import AzureError, ResourceNotFoundError
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    url = settings.key_vault_url
    found: dict[str, str] = {}
    with (
        DefaultAzureCredential() as credential,
        SecretClient(url, credential, retry_total=2, connection_timeout=10, read_timeout=30) as client,
    ):
        for field, name in missing.items():
            try:
                value = client.get_secret(name).value
            except ResourceNotFoundError:
                # A warning: a secret missing by mistake turns off keys, limits or the admin API without an error.
                log.warning("Key Vault %s has no secret %r; %s stays unset", url, name, Settings.env_name(field))
                continue
            except (AzureError, ValueError) as exc:
                raise SettingsError(
                    f"{Settings.env_name('key_vault_url')}: could not read secret {name!r} from {url} "
                    f"({type(exc).__name__})"
                ) from None
            if value:
                found[field] = value
    if found:
        log.info("read %s from Key Vault %s", ", ".join(Settings.env_name(f) for f in found), url)
    try:
        return Settings.model_validate({**settings.model_dump(), **found})
    except ValueError as exc:
        raise SettingsError(f"a secret from Key Vault {url} is not a valid setting ({type(exc).__name__})") from None
