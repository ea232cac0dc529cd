"""Build the CPU image from images/Dockerfile.cpu with buildah: no Docker daemon and, if need be, no registry.

The Dockerfile is built as it is. Its base images are pulled when a registry answers; where none does (an offline
machine, or one that reaches only package registries), stand-ins are made from what package registries give, tagged
with the exact names the `FROM` lines use:
- `python:3.11-slim-bookworm`: a Debian bookworm root filesystem from mmdebstrap with Debian's Python 3.11 and the
  machine's CA bundle (a TLS-inspecting proxy's CA must reach the `apt-get` and `uv sync` steps inside the build, as a
  company's own base image would carry it); the build then gets `--build-arg PYTHON=3.11`;
- `ghcr.io/astral-sh/uv:<version>`: the `/uv` binary from PyPI's `uv` wheel of the same version.
Layers are cached (`--layers`): the dependency layer, llama.cpp's compile included, is rebuilt only when the lock
changes.

Usage (as root; standard library only):
  python3 scripts/image.py build [--tag TAG] [--uv UV]   build (stand-in bases first if needed); prints the tag
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "Dockerfile.cpu"
DEFAULT_TAG = "localhost/ggufstack:cpu"
STAND_IN_PYTHON = "3.11"  # Debian bookworm's python3
STAND_IN_LABEL = "io.ggufstack.stand-in"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def buildah(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], check=check, text=True, capture_output=capture)


def base_images(dockerfile: Path, python: str) -> tuple[str, str]:
    """The Python and uv images the Dockerfile's `FROM` lines name, with PYTHON substituted."""
    text = dockerfile.read_text()
    (uv,) = re.findall(r"^FROM (ghcr\.io/astral-sh/uv:\S+) AS uv$", text, re.M)
    pythons = set(re.findall(r"^FROM (python:\S+)", text, re.M))
    (python_image,) = {p.replace("${PYTHON}", python) for p in pythons}
    return f"docker.io/library/{python_image}", uv


def default_python(dockerfile: Path) -> str:
    return re.search(r"^ARG PYTHON=(\S+)$", dockerfile.read_text(), re.M).group(1)


def image_exists(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False, capture=True).returncode == 0


def pulled(name: str) -> bool:
    return image_exists(name) or buildah("pull", "--quiet", name, check=False, capture=True).returncode == 0


def ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("error: no CA bundle found (set SSL_CERT_FILE)")


def make_python_stand_in(name: str) -> None:
    say(f"making a stand-in for {name} (Debian bookworm + python3, mmdebstrap)")
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--include=ca-certificates,python3,python3-venv",
                '--customize-hook=chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python3',
                f'--customize-hook=cp {ca_bundle()} "$1"/etc/ssl/certs/ca-certificates.crt',
                "bookworm",
                str(rootfs),
            ],
            check=True,
        )
        container = buildah("from", "scratch", capture=True).stdout.strip()
        buildah("add", "--quiet", container, str(rootfs), "/")
        buildah(
            "config",
            "--env",
            f"PATH={PATH}",
            "--env",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "--label",
            f"{STAND_IN_LABEL}=true",
            "--cmd",
            "python3",
            container,
        )
        buildah("commit", "--quiet", "--rm", container, name, capture=True)


def make_uv_stand_in(name: str, uv: str) -> None:
    version = name.rsplit(":", 1)[1]
    say(f"making a stand-in for {name} (the uv binary from PyPI's uv {version} wheel)")
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([uv, "venv", "--quiet", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        subprocess.run([uv, "pip", "install", "--quiet", "--python", python, f"uv=={version}"], check=True)
        container = buildah("from", "scratch", capture=True).stdout.strip()
        buildah("copy", "--quiet", container, str(venv / "bin" / "uv"), "/uv")
        buildah("config", "--label", f"{STAND_IN_LABEL}=true", container)
        buildah("commit", "--quiet", "--rm", container, name, capture=True)


def ensure_bases(dockerfile: Path, uv: str) -> str:
    """Make the `FROM` images available; returns the PYTHON build argument to build with."""
    python = default_python(dockerfile)
    python_image, uv_image = base_images(dockerfile, python)
    if pulled(python_image) and pulled(uv_image):
        return python
    say("the base images cannot be pulled: building on stand-ins")
    python_image, uv_image = base_images(dockerfile, STAND_IN_PYTHON)
    if not image_exists(python_image):
        make_python_stand_in(python_image)
    if not image_exists(uv_image):
        make_uv_stand_in(uv_image, uv)
    return STAND_IN_PYTHON


def build(tag: str, uv: str, dockerfile: Path = DOCKERFILE) -> str:
    if os.geteuid() != 0:
        raise SystemExit("error: building the image needs root (buildah with --isolation chroot)")
    python = ensure_bases(dockerfile, uv)
    say(f"building {tag} from {dockerfile.relative_to(ROOT)} (PYTHON={python})")
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--layers",
        # Docker's image format, as `docker build` makes: OCI's has no SHELL or HEALTHCHECK.
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON={python}",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        str(ROOT),
    )
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--uv", default=os.environ.get("UV", "uv"), help="the uv binary (for the uv stand-in)")
    args = parser.parse_args()
    print(build(args.tag, args.uv))


if __name__ == "__main__":
    main()
