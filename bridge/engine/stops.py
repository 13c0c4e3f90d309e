"""Stop strings over a stream of text pieces, holding back only what could start a stop."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feeds text through; releases all of it except a suffix that may begin a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was found). After a stop, feed nothing more."""
        if not self._stops:
            return text, False
        buf = self._held + text
        cut = min((i for s in self._stops if (i := buf.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self, text: str = "") -> str:
        """The rest of the text at the end of the stream (no stop string can follow)."""
        out, hit = self.feed(text)
        if hit:
            return out
        out += self._held
        self._held = ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
