"""`ggufstack serve` runs the API server; `ggufstack settings` shows what it would run with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from server.cli.console import fail, out
from server.config.exposure import open_to_the_network
from server.config.key_vault import with_key_vault_secrets
from server.config.redaction import redacted_url
from server.config.settings import Settings, SettingsError, load_settings
from server.telemetry.logging import configure_logging


def _settings_or_exit(*, log: bool = False, **overrides: object) -> Settings:
    """The settings, Key Vault's secrets included; `log`: configure logging first, so what reading the vault
    warns about (a secret it lacks) reaches the server's log in its format."""
    try:
        settings = load_settings(**overrides)
        if log:
            configure_logging(settings.log_level, settings.log_format)
        return with_key_vault_secrets(settings)
    except SettingsError as exc:
        raise fail(f"invalid settings: {exc}", 2) from None


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env GGUFSTACK_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port [env GGUFSTACK_PORT].")] = None,
    model_path: Annotated[Path | None, typer.Option(help="Local GGUF file [env GGUFSTACK_MODEL_PATH].")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Run the API server. With no model configured it serves the demo model SmolLM2-135M-Instruct."""
    settings = _settings_or_exit(log=True, host=host, port=port, model_path=model_path, log_level=log_level)
    if (problem := open_to_the_network(settings)) is not None:
        raise fail(problem, 2)
    _refuse_a_newer_database(settings)
    import uvicorn

    from server.api.app import create_app
    from server.api.http_protocol import http_protocol
    from server.lifecycle.shutdown import DrainingServer

    app = create_app(settings)
    # Our middleware writes one access line per request with its request id, tokens and timings.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=http_protocol(settings),
    )
    DrainingServer(config, app.state.registry, settings.drain_timeout_s).run()


def _refuse_a_newer_database(settings: Settings) -> None:
    if settings.database_url is None:
        return
    url = settings.database_url.get_secret_value()
    import asyncio

    from server.store.entra import default_credential
    from server.store.postgres import schema_too_new

    async def check() -> str | None:
        credential = default_credential() if settings.database_auth == "entra" else None
        try:
            return await schema_too_new(url, credential)
        finally:
            if credential is not None:
                await credential.close()

    problem = asyncio.run(check())
    if problem is not None:
        raise fail(problem, 3)


def settings() -> None:
    """Show every setting, the environment variable that sets it, and its current value."""
    current = _settings_or_exit()
    table = Table("variable", "value", "meaning")
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        shown = "" if value is None else str(value)
        if name.endswith("_url") and value is not None and not Settings.is_secret(name):
            shown = redacted_url(shown)
        table.add_row(Settings.env_name(name), shown, field.description or "")
    out.print(table)
