"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing anchor or a page left out of
the navigation fails the test suite, not a reader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_page_the_readme_links_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert linked and all((ROOT / page).is_file() for page in linked)
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {Path(page).name for page in linked} | {"index.md"} == pages


def test_the_readme_stays_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
