"""Clients for the model container, authenticated the way the settings say: a connection string (Azurite, local
development) or DefaultAzureCredential against an account URL (workload identity in AKS, `az login` on a laptop)."""

from __future__ import annotations

from typing import Any

from azure.identity import DefaultAzureCredential
from azure.storage.blob import ContainerClient, ExponentialRetry

from server.config.redaction import redacted_url
from server.model_source.errors import ModelSourceError


def quick_retry() -> ExponentialRetry:
    # The SDK's default retry waits 15 s and more between tries; a few quick ones suit an operator or a loader that
    # retries on its own.
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3)


def container_client(
    container: str, *, account_url: str | None, connection_string: str | None, **options: Any
) -> ContainerClient:
    """A client for `container`; ModelSourceError (one line) when the credential cannot even be set up."""
    options.setdefault("retry_policy", quick_retry())
    try:
        if connection_string:
            return ContainerClient.from_connection_string(connection_string, container, **options)
        if not account_url:
            raise ModelSourceError(
                "no blob account: set GGUFSTACK_BLOB_ACCOUNT_URL or GGUFSTACK_BLOB_CONNECTION_STRING"
            )
        credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return ContainerClient(account_url, container, credential=credential, **options)
    except ValueError as exc:
        where = redacted_url(account_url) if account_url else "the connection string"
        raise ModelSourceError(f"cannot set up access to container {container} at {where}: {exc}") from None
