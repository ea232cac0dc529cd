"""Turns a stream of token pieces into safe text deltas: whole UTF-8 characters only, stop strings cut out.

Pure logic shared by every engine; a model's tokens are plain bytes here.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class _StopScanner:
    """Knuth-Morris-Pratt over a stream: how much of one stop string the text seen so far ends with, kept up to date
    one character at a time, so a long stop string costs linear time instead of a rescan at every token."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.matched = 0
        self._fallback = [0] * len(stop)  # the longest proper prefix of stop[:i + 1] that is also its suffix
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = self._fallback[k - 1]
            if stop[i] == stop[k]:
                k += 1
            self._fallback[i] = k

    def step(self, char: str) -> bool:
        """Advance by one character; True when the text now ends with the whole stop string."""
        k = self.matched
        if k == len(self.stop):
            k = self._fallback[k - 1]
        while k and self.stop[k] != char:
            k = self._fallback[k - 1]
        if self.stop[k] == char:
            k += 1
        self.matched = k
        return k == len(self.stop)


class StopMatcher:
    """Holds back text that might be the start of a stop string until it is known not to be one.

    A stop string is found where it ends first, so the answer does not depend on how the text was split into tokens.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._scanners = [_StopScanner(s) for s in dict.fromkeys(stops) if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text (Anthropic's reply names it)

    def push(self, text: str) -> str:
        """Add text; return what may be emitted now. After a stop string is seen, `stopped` is True."""
        if self.stopped:
            return ""
        if not self._scanners:
            return text
        combined = self._held + text
        for i in range(len(self._held), len(combined)):
            ended = [s for s in self._scanners if s.step(combined[i])]
            if ended:
                self.stopped, self._held = True, ""
                self.matched = max(ended, key=lambda s: len(s.stop)).stop
                return combined[: i + 1 - len(self.matched)]
        keep = max(s.matched for s in self._scanners)
        self._held = combined[len(combined) - keep :]
        return combined[: len(combined) - keep]

    def flush(self) -> str:
        """The held-back text, once generation ended for another reason."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


class TextAssembler:
    """Bytes of token pieces in, printable text deltas out."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    @property
    def stop_sequence(self) -> str | None:
        return self._stops.matched

    def push(self, piece: bytes) -> str:
        return self._stops.push(self._decoder.decode(piece))

    def finish(self) -> str:
        return self._stops.push(self._decoder.decode(b"", final=True)) + self._stops.flush()
