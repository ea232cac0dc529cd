"""Whether a new model fits in memory beside the serving one, which decides how a hot swap runs.

Beside: the new model loads while the old one serves, then takes new requests; no request waits. In place: the
server reports not ready, lets its requests in flight finish, frees the old model, loads the new one and comes back;
Kubernetes routes around it meanwhile. What fits is the memory the weights run from: VRAM with GPU offload (so the
GPU pool's VM size decides), RAM otherwise, where the pod's cgroup limit counts as well as the node's free memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SwapMode = Literal["beside", "in_place"]
# Room left over for compute buffers, the allocator and whatever else grows while two models are loaded.
HEADROOM = 1.2
_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class SwapPlan:
    mode: SwapMode
    why: str


def plan_swap(setting: str, *, needed_bytes: int, available_bytes: int | None, where: str) -> SwapPlan:
    """Pure decision: the setting wins unless it is `auto`; an unknown free memory means in place (the safe one)."""
    match setting:
        case "beside" | "in_place":
            return SwapPlan(setting, f"GGUFSTACK_MODEL_SWAP={setting}")
    needed_mib = needed_bytes * HEADROOM / 2**20
    if available_bytes is None:
        return SwapPlan("in_place", f"free {where} unknown; the new model needs about {needed_mib:,.0f} MiB")
    available_mib = available_bytes / 2**20
    fits = needed_bytes * HEADROOM <= available_bytes
    relation = "fits in" if fits else "exceeds"
    why = (
        f"the new model's {needed_mib:,.0f} MiB (weights + KV, with headroom) {relation} "
        f"{available_mib:,.0f} MiB free {where}"
    )
    return SwapPlan("beside" if fits else "in_place", why)


def free_ram_bytes() -> int | None:
    """MemAvailable, or less if the cgroup (the pod's memory limit) has less room left."""
    free = None
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((_CGROUP / "memory.current").read_text().strip())
            room = int(limit) - used
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def free_vram_bytes() -> int | None:
    """The least free memory over the visible GPUs (llama.cpp splits layers over all of them), from nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        values = [int(line.strip()) * 2**20 for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot read free GPU memory from nvidia-smi: %s", exc)
        return None
    return min(values) if values else None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Hand the heap an unloaded model freed back to the system; False where the C library cannot (not glibc).

    glibc keeps freed pages for reuse, and the pod's memory limit counts them: without this, the resident size
    after each load of a model that replaced another stays up to some hundred MiB higher (bench/many_models.py)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
