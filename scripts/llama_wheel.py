"""Print the path of a llama-cpp-python wheel built from the sdist that uv.lock pins, building it once if needed.

llama-cpp-python ships only a source distribution, and compiling it takes 7-11 minutes on 2 cores. uv caches built
wheels per download revision of the sdist, and behind registry mirrors that send no caching headers every sync makes a
new revision and compiles again. So ./dev keeps its own wheelhouse, keyed by version and CMAKE_ARGS (a CUDA build is
a different wheel), and installs from it.

The images use it too, so that their llama.cpp compile is a layer keyed by the pinned sdist alone, not by the whole
lock (a dev-only dependency bump must not recompile llama.cpp in the image):

Usage (standard library only: it runs before any environment exists):
  python3 scripts/llama_wheel.py WHEELHOUSE UV        the wheel for uv.lock's pin, built if missing; prints its path
  python3 scripts/llama_wheel.py --pin                prints uv.lock's pin: version, sdist URL, sha256
  python3 scripts/llama_wheel.py --from-pin PIN WHEELHOUSE UV    the same as the first, for a pin --pin wrote
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llama-cpp-python"


def locked_sdist(lock_path: Path = ROOT / "uv.lock") -> tuple[str, str, str]:
    lock = tomllib.loads(lock_path.read_text())
    (entry,) = (p for p in lock["package"] if p["name"] == PACKAGE)
    algorithm, digest = entry["sdist"]["hash"].split(":", 1)
    if algorithm != "sha256":
        raise SystemExit(f"error: uv.lock pins {PACKAGE} with {algorithm}, expected sha256")
    return entry["version"], entry["sdist"]["url"], digest


# llama.cpp's AMX kernels (Intel Xeon 4th generation and later) crash the process at their first matrix product: the
# tile configuration they load is invalid (llama.cpp issue 20824, unfixed in the pinned version). A native build on
# such a CPU compiles them in (-march=native defines __AMX_INT8__), so every build here leaves them out; the AVX-512
# and AVX2 kernels serve instead. The predefined macro is removed whatever -march comes after it on the command line.
NO_AMX = "-U__AMX_INT8__"
# A wheelhouse built before a change of how wheels are built is not reused: its wheels are another build.
RECIPE = "no-amx"


def flavour_dir(wheelhouse: Path, version: str) -> Path:
    flags = os.environ.get("CMAKE_ARGS", "").strip()
    tag = hashlib.sha256(f"{RECIPE} {flags}".encode()).hexdigest()[:10] if flags else RECIPE
    return wheelhouse / f"{version}-{tag}"


def build_environment(base: dict[str, str]) -> dict[str, str]:
    """The compile's environment: CMake starts CMAKE_C_FLAGS and CMAKE_CXX_FLAGS from CFLAGS and CXXFLAGS."""
    env = dict(base)
    for name in ("CFLAGS", "CXXFLAGS"):
        env[name] = f"{env.get(name, '')} {NO_AMX}".strip()
    return env


def build(url: str, digest: str, out: Path, uv: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(tmp) / url.rsplit("/", 1)[-1]
        print(f"==> downloading {sdist.name}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=300) as response, sdist.open("wb") as f:  # noqa: S310 - locked URL
            hasher = hashlib.sha256()
            while chunk := response.read(1 << 20):
                hasher.update(chunk)
                f.write(chunk)
        if hasher.hexdigest() != digest:
            raise SystemExit(f"error: {sdist.name} has sha256 {hasher.hexdigest()}, uv.lock says {digest}")
        print(f"==> compiling {PACKAGE} (once; 7-11 minutes on 2 cores)", file=sys.stderr)
        staging = Path(tmp) / "wheel"
        # Only the wheel's path may reach stdout: ./dev captures it.
        subprocess.run(
            [uv, "build", "--wheel", "--out-dir", str(staging), str(sdist)],
            check=True,
            stdout=sys.stderr,
            env=build_environment(dict(os.environ)),
        )
        out.mkdir(parents=True, exist_ok=True)
        for wheel in staging.glob("*.whl"):
            os.replace(wheel, out / wheel.name)


def main() -> None:
    args = sys.argv[1:]
    if args == ["--pin"]:
        print(*locked_sdist())
        return
    if args[:1] == ["--from-pin"]:
        version, url, digest = Path(args[1]).read_text().split()
        args = args[2:]
    else:
        version, url, digest = locked_sdist()
    wheelhouse, uv = Path(args[0]), args[1]
    out = flavour_dir(wheelhouse, version)
    wheels = sorted(out.glob("*.whl"))
    if not wheels:
        build(url, digest, out, uv)
        wheels = sorted(out.glob("*.whl"))
    print(wheels[-1])


if __name__ == "__main__":
    main()
