"""The guards that keep the server's layout as designed: its layers only look down (import-linter's contracts in
pyproject.toml), its types check (mypy, strict), every silenced type error says which and why, and no module grows
past what one reader takes in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"
MOST_LINES = 400
# A silenced type error names its code and says why on the same line: `# type: ignore[code]  # why`.
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<code>\[[^\]]+\])?(?P<why>\s*#\s*\S.*)?")


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_the_layers_only_look_down() -> None:
    result = _run(str(Path(sys.executable).with_name("lint-imports")), "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_server_type_checks_strictly() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_every_silenced_type_error_names_its_code_and_reason() -> None:
    bare = []
    for path in sorted(SERVER.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for found in _IGNORE.finditer(line):
                if not found["code"] or not found["why"]:
                    bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)


def test_no_server_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in SERVER.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert not long, long
