"""Stop strings over streamed text: hold back what might be the start of one."""

from __future__ import annotations


class StopStringMatcher:
    """Feed generated text; get back text that is safe to emit.

    Text that could still turn into a stop string is held until the next piece
    decides it. Once a stop string appears, everything from it on is dropped.
    """

    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        # The stop string that ended the text (Anthropic reports it).
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        cut = min(found)[0] if found else -1
        if cut >= 0:
            self.stopped = True
            self.matched = min(found)[1]
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._longest_partial_suffix()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _longest_partial_suffix(self) -> int:
        """Length of the longest suffix of pending text that starts a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if stop.startswith(self._pending[-size:]):
                    best = size
                    break
        return best
