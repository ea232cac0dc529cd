"""`ggufstack model …` as an operator runs it, against Azurite: results on stdout, errors as one line."""

from __future__ import annotations

from pathlib import Path

from azure.storage.blob import ContainerClient

from tests.support.azurite import Azurite
from tests.support.cli import run_cli


def model_cli(azurite: Azurite, container: ContainerClient, *args: str, **env: str):
    return run_cli(
        "model",
        *args,
        GGUFSTACK_BLOB_CONNECTION_STRING=azurite.connection_string,
        GGUFSTACK_BLOB_CONTAINER=container.container_name,
        **env,
    )


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_push_list_info_and_rollback(
    azurite: Azurite, container: ContainerClient, demo_gguf: Path, demo_sha256: str, gemma_gguf: Path
) -> None:
    pushed = model_cli(azurite, container, "push", str(demo_gguf), GGUFSTACK_BLOB_NAME="model.gguf")
    assert pushed.returncode == 0, pushed.stderr
    assert f"sha256 {demo_sha256}" in pushed.stdout and "llama" in pushed.stdout
    assert "MiB/s" in pushed.stderr  # the progress bar
    again = model_cli(azurite, container, "push", str(gemma_gguf), "--name", "model.gguf")
    assert again.returncode == 0, again.stderr
    assert "rollback" in again.stdout  # says how to undo it

    listed = model_cli(azurite, container, "list", GGUFSTACK_BLOB_NAME="model.gguf")
    assert listed.returncode == 0, listed.stderr
    assert "serving" in listed.stdout and "gemma3" in listed.stdout and demo_sha256[:16] in listed.stdout
    pinned = model_cli(
        azurite, container, "list", GGUFSTACK_BLOB_NAME="model.gguf", GGUFSTACK_MODEL_VERSION=demo_sha256[:12]
    )
    row = next(line for line in pinned.stdout.splitlines() if demo_sha256[:16] in line)
    assert "serving (pinned)" in row, pinned.stdout

    info = model_cli(azurite, container, "info", "model.gguf", "--n-ctx", "2048", "--slots", "2")
    assert info.returncode == 0, info.stderr
    assert "gemma3" in info.stdout and "Q4_K_M" in info.stdout and "2 slots x 2,048 tokens" in info.stdout

    rolled = model_cli(azurite, container, "rollback", GGUFSTACK_BLOB_NAME="model.gguf")
    assert rolled.returncode == 0, rolled.stderr
    assert demo_sha256 in rolled.stdout


def test_info_on_a_local_file_needs_no_account(demo_gguf: Path) -> None:
    result = run_cli("model", "info", str(demo_gguf))
    assert result.returncode == 0, result.stderr
    assert "Q4_1" in result.stdout and "memory needed" in result.stdout


def test_refusals_are_one_readable_line(azurite: Azurite, container: ContainerClient, tmp_path: Path) -> None:
    junk = tmp_path / "model.gguf"
    junk.write_text("definitely not a model\n")
    assert_one_line_error(model_cli(azurite, container, "push", str(junk)), "not a GGUF file")
    assert_one_line_error(model_cli(azurite, container, "push", str(tmp_path / "missing.gguf")), "is not a file")
    assert_one_line_error(model_cli(azurite, container, "rollback", "--name", "model.gguf"), "does not exist")
    assert_one_line_error(run_cli("model", "list"), "GGUFSTACK_BLOB_ACCOUNT_URL")
    unreachable = run_cli(
        "model",
        "list",
        GGUFSTACK_BLOB_CONNECTION_STRING=azurite.connection_string.replace(str(azurite.port), "9"),
    )
    assert_one_line_error(unreachable)
