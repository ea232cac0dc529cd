"""The README's front page and the configuration page must match the code: the two commands, the system packages
./dev installs, every setting."""

from __future__ import annotations

import re
from pathlib import Path

from server.config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block and README.index(first_block.group(0)) < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["./dev serve", "./dev test"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert script.rstrip().endswith("exec ./dev test")


def test_every_setting_is_documented() -> None:
    table = {
        m.group(1) for m in re.finditer(r"^\| `((?:GGUFSTACK|APPLICATIONINSIGHTS)_[A-Z0-9_]+)` \|", CONFIGURATION, re.M)
    }
    assert table == {Settings.env_name(name) for name in Settings.model_fields}


def test_readme_lists_every_system_package_dev_installs() -> None:
    dev = (ROOT / "dev").read_text()
    installed = set(re.findall(r"missing\+=\(([\w.+-]+)\)", dev))
    installed |= set(re.search(r"apt-get install [^\n]*\\\n\s+([^;\n]+);", dev).group(1).split())
    opening = README[: README.index("\n## ")]
    named = {p.strip() for group in re.findall(r"\*\*([^*]+)\*\*", opening) for p in group.split(",")}
    assert installed == named
