"""Turns a stream of token pieces into safe text deltas: whole UTF-8 characters only, stop strings cut out.

Pure logic shared by every engine; a model's tokens are plain bytes here.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopMatcher:
    """Holds back text that might be the start of a stop string until it is known not to be one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what may be emitted now. After a stop string is seen, `stopped` is True."""
        if self.stopped:
            return ""
        self._held += text
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._held = self._held[:cut], ""
            self.stopped = True
            return out
        keep = self._longest_partial_stop()
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """The held-back text, once generation ended for another reason."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _longest_partial_stop(self) -> int:
        held = self._held
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(held)), best, -1):
                if held.endswith(stop[:n]):
                    best = n
                    break
        return best


class TextAssembler:
    """Bytes of token pieces in, printable text deltas out."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def push(self, piece: bytes) -> str:
        return self._stops.push(self._decoder.decode(piece))

    def finish(self) -> str:
        return self._stops.push(self._decoder.decode(b"", final=True)) + self._stops.flush()
