"""The `ggufstack` command line: one Typer root, one module per command group."""

from __future__ import annotations

import typer

from server.cli import serve
from server.cli.keys import keys_app
from server.cli.model import model_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Serve GGUF models with an OpenAI-compatible API.")
app.command()(serve.serve)
app.command()(serve.settings)
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
