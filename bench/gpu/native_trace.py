"""Native stacks of crashed processes: build the preloaded handler (native_trace.c), find its stacks in logs, and
name the functions in them.

The handler prints frames as glibc's backtrace_symbols_fd does: `/path/lib.so(function+0x1a)[0x7f...]` where the
library exports the function, `/path/lib.so(+0x1234)[0x7f...]` where it does not. The second kind is named with
`addr2line` against the library while it is still on the machine, so the report needs no copy of the build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("native_trace.c")
BEGIN = "=== native stack (bench/gpu/native_trace.c)"
END = "=== end of native stack ==="
_FRAME = re.compile(r"^(?P<lib>[^\s(]+)\((?P<symbol>[^)+]*)(?:\+(?P<offset>0x[0-9a-f]+))?\)\s*\[(?P<pc>0x[0-9a-f]+)\]")


def build(work: Path) -> Path | None:
    """The handler as a shared library for LD_PRELOAD, or None where this machine has no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    library = work / "native_trace.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(SOURCE)], check=True, capture_output=True
    )
    return library


def preload(env: dict[str, str], library: Path | None) -> dict[str, str]:
    """`env` with the handler preloaded before whatever it preloads already."""
    if library is None:
        return env
    return env | {"LD_PRELOAD": " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))}


def stacks(text: str) -> list[list[str]]:
    """Each native stack in a log, as its lines (the header first)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(BEGIN):
            block = [line]
            for frame in lines[i + 1 : i + 200]:
                if frame.startswith(END):
                    break
                block.append(frame)
            found.append(block)
    return found


def symbolize(block: list[str]) -> list[str]:
    """A stack's frames as `library: function`, from the crash site down: the handler's own frames, the signal
    trampoline and any handler that ran before (Python's faulthandler) are left out."""
    frames = [match for line in block[1:] if (match := _FRAME.match(line.strip()))]
    frames = [f for f in frames if Path(f["lib"]).name != "native_trace.so"]
    if frames:  # the first frame left is the kernel's return into the signal trampoline; the last one is the crash's
        trampoline = (frames[0]["lib"], frames[0]["symbol"], frames[0]["offset"])
        last = max(i for i, f in enumerate(frames) if (f["lib"], f["symbol"], f["offset"]) == trampoline)
        frames = frames[last + 1 :]
    named = [block[0].strip("= ").removeprefix("native stack (bench/gpu/native_trace.c): ")]
    for match in frames:
        library, symbol, offset = match["lib"], match["symbol"], match["offset"]
        if symbol:
            function = _demangle(symbol)
        elif offset:
            function = _addr2line(library, offset)
        else:
            function = "?"
        named.append(f"{Path(library).name}: {function}")
    return named


def _demangle(symbol: str) -> str:
    tool = shutil.which("c++filt")
    if tool is None:
        return symbol
    done = subprocess.run([tool, symbol], capture_output=True, text=True)
    return done.stdout.strip() or symbol


def _addr2line(library: str, offset: str) -> str:
    """The function around `offset` in `library` (the offset the handler printed is from the library's load
    address; one byte back, as the address is the return address after the call)."""
    tool = shutil.which("addr2line")
    if tool is None or not Path(library).exists():
        return f"+{offset}"
    address = hex(max(0, int(offset, 16) - 1))
    done = subprocess.run([tool, "-f", "-C", "-e", library, address], capture_output=True, text=True)
    function = (done.stdout.splitlines() or ["??"])[0]
    return f"+{offset}" if function == "??" else f"{function} (+{offset})"


def from_logs(folder: Path) -> dict[str, list[list[str]]]:
    """The named stacks in every log under `folder`, by the log's path relative to it."""
    found = {}
    for log in sorted(folder.rglob("*.log")):
        blocks = stacks(log.read_text(errors="replace"))
        if blocks:
            found[str(log.relative_to(folder))] = [symbolize(block) for block in blocks]
    return found
