"""`ggufstack keys create|list|revoke`: a client of the admin API (`--url`), authorised by GGUFSTACK_ADMIN_API_KEY."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table
from rich.text import Text

from server.cli.console import err, fail, out
from server.config.settings import Settings
from server.protocol.admin import CreatedKey, KeyInfo, KeyList
from server.telemetry.logging import printable

keys_app = typer.Typer(no_args_is_help=True, help="Issue, list and revoke API keys through a server's admin API.")

UrlOption = Annotated[str, typer.Option(help="The server's base URL.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _call(method: str, url: str, path: str, admin_key: str | None, json: dict[str, Any] | None = None) -> Any:
    if not admin_key:
        raise fail(f"set {Settings.env_name('admin_api_key')} to the server's admin key", 2)
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=json, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise fail(f"{response.status_code}: {message}")
    return response.json()


def _when(unix: int | None) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if unix is not None else ""


def _row(key: KeyInfo) -> list[Text]:
    """A key's cells as plain text: a name is never read as markup, and its control characters are shown escaped (the
    server refuses them, but a table written before it did, or by hand, may hold some)."""
    limits = [str(key.rpm) if key.rpm else "-", str(key.tpm) if key.tpm else "-"]
    models = ", ".join(key.models) if key.models is not None else "all"
    cells = [key.id, key.name, key.prefix + "…", models, *limits, _when(key.created), _when(key.revoked)]
    return [Text(printable(cell)) for cell in cells]


def _table(keys: list[KeyInfo]) -> Table:
    table = Table("id", "name", "prefix", "models", "rpm", "tpm", "created", "revoked")
    for key in keys:
        table.add_row(*_row(key))
    return table


AdminKey = Annotated[
    str | None, typer.Option(envvar=Settings.env_name("admin_api_key"), hidden=True, show_envvar=False)
]


@keys_app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (a team, an app).")],
    model: Annotated[list[str] | None, typer.Option(help="A model the key may use (repeat); default: all.")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    owner: Annotated[str | None, typer.Option(help="Who the key belongs to.")] = None,
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Issue a key. It is printed once and never stored: keep it."""
    body = {"name": name, "models": model or None, "rpm": rpm, "tpm": tpm, "owner": owner}
    created = CreatedKey.model_validate(_call("POST", url, "/admin/keys", admin_key, body))
    out.print(_table([created]))
    err.print("the key (shown once, stored only as a hash):", highlight=False)
    print(created.key)


@keys_app.command("list")
def list_keys(url: UrlOption = DEFAULT_URL, admin_key: AdminKey = None) -> None:
    """List keys (never the keys themselves), revoked ones included."""
    listed = KeyList.model_validate(_call("GET", url, "/admin/keys", admin_key))
    out.print(_table(listed.data))


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    url: UrlOption = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Revoke a key. Other replicas stop accepting it within GGUFSTACK_KEY_CACHE_TTL_S."""
    revoked = KeyInfo.model_validate(_call("DELETE", url, f"/admin/keys/{key_id}", admin_key))
    out.print(_table([revoked]))
