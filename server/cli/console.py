"""Where the command line writes: results to stdout, progress and errors to stderr, each error one line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as one error line and return the exit to raise. The message is shown as text, never read as
    markup: it may quote a server's answer or a file name, and a `[` in either must not change or break the line."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code)
