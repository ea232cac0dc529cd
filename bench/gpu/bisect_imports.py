"""Which import makes loading a model crash: a bisection over the modules a crashing process imported, each try a
fresh process (smoke.py's `ours-after:` variant) that imports a prefix of them and loads the model.

The modules come in the order their imports begin, so a package comes before what it pulls in. The first crashing
prefix names a module; the modules its import brought in are then tried without it, and so on down, so the answer
is the deepest module whose import alone (after the ones before it) still makes the load crash, with the chain of
packages that led to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SMOKE = Path(__file__).with_name("smoke.py")


@dataclass
class Bisection:
    modules: int = 0
    chain: list[str] = field(default_factory=list)
    tries: list[dict[str, object]] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, object]:
        culprit = self.chain[-1] if self.chain else None
        return {
            "modules": self.modules,
            "culprit": culprit,
            "chain": self.chain,
            "note": self.note,
            "tries": self.tries,
        }


class _OutOfTimeError(Exception):
    pass


def list_imports(modules: list[str], *, env: dict[str, str], cwd: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(SMOKE), "--list-imports", ",".join(modules)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("IMPORTS ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"--list-imports {modules} failed: {(done.stderr or done.stdout)[-1500:]}")
    return list(json.loads(lines[-1].removeprefix("IMPORTS ")))


def crashes_with(model: Path, *, env: dict[str, str], cwd: Path, log: Path) -> Callable[[list[str]], bool]:
    """A probe: does loading `model` after importing these modules end the process by a signal?"""

    def probe(modules: list[str]) -> bool:
        with log.open("a") as out:
            out.write(f"\n===== ours-after: {len(modules)} modules, last {modules[-1:]}\n")
            out.flush()
            argv = [sys.executable, "-X", "faulthandler", str(SMOKE), "ours-after:" + ",".join(modules), str(model)]
            done = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120)
        return done.returncode < 0

    return probe


def bisect(
    targets: list[str],
    crashes: Callable[[list[str]], bool],
    imports_of: Callable[[list[str]], list[str]],
    *,
    deadline: float,
) -> Bisection:
    """Narrow down which of the modules `targets` import makes `crashes` true (checked first for all of them)."""
    result = Bisection()

    def tried(modules: list[str]) -> bool:
        if time.monotonic() > deadline:
            raise _OutOfTimeError
        crashed = crashes(modules)
        result.tries.append({"modules": len(modules), "last": modules[-1] if modules else None, "crashed": crashed})
        return crashed

    try:
        candidates = imports_of(targets)
        result.modules = len(candidates)
        if not candidates or not tried(candidates):
            result.note = "the load did not crash after importing all of them: the crash is not the imports'"
            return result
        base: list[str] = []
        while candidates:
            low, high = 1, len(candidates)  # the shortest crashing prefix is in [low, high]
            while low < high:
                middle = (low + high) // 2
                if tried(base + candidates[:middle]):
                    high = middle
                else:
                    low = middle + 1
            found = candidates[low - 1]
            result.chain.append(found)
            base += candidates[: low - 1]
            listed = imports_of([*base, found])
            brought = listed[listed.index(found) + 1 :] if found in listed else []
            if not brought or not tried(base + brought):
                break  # the module's own code (or a native library it maps), not something it imports
            candidates = brought
        result.note = f"the load crashes once {result.chain[-1]} is imported (chain: {' > '.join(result.chain)})"
    except _OutOfTimeError:
        result.note = "out of time; the chain so far: " + " > ".join(result.chain)
    return result
