"""`ggufstack model …`: ship a GGUF to the container the servers watch, see what is there, roll back, size a model.

The account and container come from the same settings the server reads (GGUFSTACK_BLOB_ACCOUNT_URL with
DefaultAzureCredential, or GGUFSTACK_BLOB_CONNECTION_STRING; GGUFSTACK_BLOB_CONTAINER), so an operator's shell and a
pod agree on where the model lives. Progress goes to stderr, results to stdout, errors are one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from server.cli.console import err, fail, out
from server.config.settings import Settings, SettingsError, load_settings
from server.model_source.catalogue import ModelBlob, PublishError, names_version
from server.model_source.errors import ModelSourceError
from server.model_source.facts import GGUFFacts, memory_estimate, read_facts
from server.model_source.publish import DEFAULT_KEEP_ARCHIVED, MIB, ModelPublisher
from server.model_source.storage import container_client

model_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Push, list and roll back the GGUF blobs the servers serve."
)
# The settings contract asks for a blob name whenever an account is set; listing a container needs none.
_ANY_BLOB = "-"
_DEFAULT_SLOTS = 8


class _MiBPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? MiB/s" if speed is None else f"{speed / MIB:.1f} MiB/s", style="progress.data.speed")


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except ModelSourceError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; the blob is unchanged", 130) from None


def _configured_blob() -> str | None:
    return os.environ.get(Settings.env_name("blob_name")) or None


def _settings(blob_name: str | None) -> Settings:
    blob_name = blob_name or _configured_blob()
    try:
        try:
            return load_settings(blob_name=blob_name)
        except SettingsError:
            if blob_name:
                raise
            return load_settings(blob_name=_ANY_BLOB)
    except SettingsError as exc:
        raise fail(f"invalid settings: {exc}", 2) from None


def _publisher(settings: Settings, *, concurrency: int = 4, keep: int = DEFAULT_KEEP_ARCHIVED) -> ModelPublisher:
    secret = settings.blob_connection_string
    container = container_client(
        settings.blob_container,
        account_url=settings.blob_account_url,
        connection_string=secret.get_secret_value() if secret else None,
    )
    return ModelPublisher(container, concurrency=concurrency, keep_archived=keep)


@model_app.command()
def push(
    file: Annotated[Path, typer.Argument(help="The GGUF file to upload.")],
    name: Annotated[
        str | None, typer.Option(help="Blob name [default: GGUFSTACK_BLOB_NAME, else the file name].")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Blocks uploaded in parallel.")] = 4,
    keep: Annotated[
        int, typer.Option(min=1, help="Earlier versions kept as archived copies where the account has no versioning.")
    ] = DEFAULT_KEEP_ARCHIVED,
) -> None:
    """Upload FILE as the model blob: parallel blocks with Content-MD5, sha256 and GGUF facts as metadata."""
    blob_name = name or _configured_blob() or file.name
    settings = _settings(blob_name)
    with _one_line_errors():
        if not file.is_file():
            raise PublishError(f"{file} is not a file")
        facts = read_facts(file)
        publisher = _publisher(settings, concurrency=concurrency, keep=keep)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _MiBPerSecond(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task(f"{file.name} → {settings.blob_container}/{blob_name}", total=file.stat().st_size)
            result = publisher.push(file, blob_name, facts=facts, progress=lambda n: progress.advance(task, n))
    rate = result.size / MIB / max(result.seconds, 1e-6)
    out.print(
        f"pushed {settings.blob_container}/{result.name}: {result.size / MIB:.1f} MiB in {result.seconds:.1f} s "
        f"({rate:.1f} MiB/s), sha256 {result.sha256}, version {result.version_id}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"facts: {_facts_line(result.facts)}", highlight=False, soft_wrap=True)
    if result.previous is not None:
        out.print(
            f"previous version {result.previous.version_id} (sha256 {result.previous.sha256 or 'unknown'}) is kept: "
            f"`ggufstack model rollback --name {result.name}` restores it",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )


@model_app.command("list")
def list_models() -> None:
    """Model blobs in the container with their versions; `serving` marks what the servers serve."""
    settings = _settings(None)
    with _one_line_errors():
        models = _publisher(settings).list()
    if not models:
        out.print(f"container {settings.blob_container} holds no models yet")
        return
    served = settings.blob_name if settings.blob_name != _ANY_BLOB else None
    out.print(_versions_table(models, served, settings.model_version))


@model_app.command()
def rollback(
    name: Annotated[str | None, typer.Option(help="Blob name [default: GGUFSTACK_BLOB_NAME].")] = None,
    to: Annotated[
        str | None, typer.Option(help="Version id or sha256 prefix (8+ characters) [default: the previous model].")
    ] = None,
) -> None:
    """Make an earlier version of the model blob the current one again; servers switch to it on their next check."""
    blob_name = name or _configured_blob()
    if not blob_name:
        raise fail("which blob? pass --name or set GGUFSTACK_BLOB_NAME", 2)
    settings = _settings(blob_name)
    with _one_line_errors():
        current = _publisher(settings).rollback(blob_name, to)
    out.print(
        f"rolled back {settings.blob_container}/{blob_name}: now sha256 {current.sha256 or 'unknown'}, "
        f"version {current.version_id}",
        highlight=False,
        soft_wrap=True,
    )


@model_app.command()
def info(
    target: Annotated[str, typer.Argument(help="A local GGUF file, or the name of a blob pushed with `model push`.")],
    n_ctx: Annotated[int | None, typer.Option(min=64, help="Context per slot [default: GGUFSTACK_N_CTX].")] = None,
    slots: Annotated[
        int | None, typer.Option(min=1, help=f"Slots [default: GGUFSTACK_N_SLOTS, else {_DEFAULT_SLOTS}].")
    ] = None,
) -> None:
    """The GGUF facts of a model and the memory serving it needs (weights + KV cache) for a context and slot count."""
    path = Path(target)
    with _one_line_errors():
        if path.is_file():
            settings = _settings(None)
            facts = read_facts(path)
            where = str(path)
        else:
            settings = _settings(target)
            blob = _publisher(settings).describe(target).current
            if blob.facts is None:
                raise PublishError(
                    f"blob {target} carries no GGUF facts (not pushed with `ggufstack model push`): "
                    "run `ggufstack model info` on the file instead"
                )
            facts = blob.facts
            where = f"{settings.blob_container}/{target} version {blob.version_id}"
    n_ctx = n_ctx or settings.n_ctx
    slots = slots or settings.n_slots or _DEFAULT_SLOTS
    estimate = memory_estimate(facts, n_ctx=n_ctx, n_slots=slots)
    table = Table(title=where, show_header=False)
    for label, value in [
        ("architecture", facts.architecture),
        ("name", facts.name),
        ("parameters", f"{facts.parameters / 1e6:,.0f} M"),
        ("quantization", facts.quantization),
        ("trained context", f"{facts.context_length:,} tokens"),
        ("layers", str(facts.layers)),
        ("weights", f"{facts.weights_bytes / MIB:,.1f} MiB"),
        ("KV cache per token", f"{facts.kv_bytes_per_token / 1024:,.1f} KiB (f16)"),
        (f"KV cache, {slots} slots x {n_ctx:,} tokens", f"{estimate.kv_cache_bytes / MIB:,.1f} MiB"),
        ("memory needed (weights + KV)", f"{estimate.total_bytes / MIB:,.1f} MiB"),
    ]:
        table.add_row(label, value)
    out.print(table)
    out.print(
        "plus compute buffers (some hundreds of MiB); an upper bound for sliding-window models such as Gemma 3",
        highlight=False,
    )


def _facts_line(facts: GGUFFacts) -> str:
    return (
        f"{facts.architecture}, {facts.parameters / 1e6:,.0f} M parameters, {facts.quantization}, "
        f"context {facts.context_length:,}"
    )


def _versions_table(models: list[ModelBlob], served: str | None, pinned: str | None) -> Table:
    """`serving` marks the version the servers serve: the current one of the configured blob, or the pinned one."""
    table = Table("blob", "version", "", "size", "sha256", "model", "modified (UTC)")
    for model in models:
        for version in model.versions:
            marks = ["current"] if version.is_current else []
            if model.name == served and (names_version(version, pinned) if pinned else version.is_current):
                marks.append("serving (pinned)" if pinned else "serving")
            table.add_row(
                model.name if version.is_current else "",
                version.version_id,
                ", ".join(marks),
                f"{version.size / MIB:,.1f} MiB",
                (version.sha256 or "unknown")[:16],
                _facts_line(version.facts) if version.facts else "",
                version.modified.strftime("%Y-%m-%d %H:%M:%S"),
            )
    return table
