from server.config.settings import Settings
from tests.support.cli import run_cli


def test_invalid_setting_is_one_readable_line_and_exit_code_2() -> None:
    result = run_cli("serve", GGUFSTACK_N_CTX="lots")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "GGUFSTACK_N_CTX" in lines[0] and "valid integer" in lines[0]
    assert "Traceback" not in result.stderr


def test_invalid_option_value_is_reported_by_the_cli() -> None:
    result = run_cli("serve", "--port", "99999")
    assert result.returncode == 2
    assert "GGUFSTACK_PORT" in result.stderr


def test_settings_command_lists_every_variable() -> None:
    result = run_cli("settings", GGUFSTACK_N_CTX="2048")
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert Settings.env_name(name) in result.stdout
    assert "2048" in result.stdout


def test_help_names_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "settings" in result.stdout
