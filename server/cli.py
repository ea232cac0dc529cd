"""The `ggufstack` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from server.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Serve GGUF models with an OpenAI-compatible API.")
err = Console(stderr=True)


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        err.print(f"[bold red]error:[/] invalid settings: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _configure_logging(level: str) -> None:
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        # Containers and log collectors want one record per line, never wrapped.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env GGUFSTACK_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port [env GGUFSTACK_PORT].")] = None,
    model_path: Annotated[Path | None, typer.Option(help="Local GGUF file [env GGUFSTACK_MODEL_PATH].")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Run the API server. With no model configured it serves the demo model SmolLM2-135M-Instruct."""
    settings = _settings_or_exit(host=host, port=port, model_path=model_path, log_level=log_level)
    _configure_logging(settings.log_level)
    import uvicorn

    from server.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


@app.command()
def settings() -> None:
    """Show every setting, the environment variable that sets it, and its current value."""
    current = _settings_or_exit()
    table = Table("variable", "value", "meaning")
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        table.add_row(Settings.env_name(name), "" if value is None else str(value), field.description or "")
    Console().print(table)
