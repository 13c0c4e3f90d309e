"""Progress display for pulls, pushes and creates, drawn the way the `ollama` CLI draws it.

On a terminal every line (spinners and bars) is redrawn in place, at most ten times a second.
Anywhere else (a pipe, a log file, a test) each line is written once, in its final state, when
the next one starts or when the display stops.
"""

from __future__ import annotations

import shutil
import time
from typing import Protocol, TextIO

from bridge.client.formats import human_bytes

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class State(Protocol):
    def render(self, width: int) -> str: ...

    def stop(self) -> None: ...


def _duration(seconds: float) -> str:
    if seconds >= 100 * 3600:
        return "99h+"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60)}m"
    s = round(seconds)
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


class Spinner:
    def __init__(self, message: str) -> None:
        self.message = message
        self.started = time.monotonic()
        self.stopped = False

    def render(self, width: int) -> str:
        if self.stopped:
            return self.message.strip()
        frame = _SPINNER[int((time.monotonic() - self.started) * 10) % len(_SPINNER)]
        return f"{self.message.strip()} {frame} "

    def stop(self) -> None:
        self.stopped = True


class Bar:
    def __init__(self, message: str, total: int, completed: int = 0) -> None:
        self.message = message
        self.total = total
        self.initial = completed
        self.current = completed
        self.started = time.monotonic()
        self.stopped_at: float | None = time.monotonic() if completed >= total else None

    def set(self, value: int) -> None:
        self.current = min(value, self.total)
        if self.current >= self.total and self.stopped_at is None:
            self.stopped_at = time.monotonic()

    def stop(self) -> None:
        pass

    def _rate(self) -> float:
        end = self.stopped_at or time.monotonic()
        elapsed = round(end - self.started)
        return (self.current - self.initial) / elapsed if elapsed > 0 else 0.0

    def render(self, width: int) -> str:
        percent = self.current / self.total * 100 if self.total > 0 else 0.0
        pre = f"{self.message.strip()} {percent:3.0f}%"
        if self.stopped_at is None:
            suf = f"{human_bytes(self.current):>6}/{human_bytes(self.total):>6}"
        else:
            suf = f"{human_bytes(self.total):>6}" + " " * 7
        rate = self._rate()
        if self.stopped_at is None and rate > 0:
            suf += f"  {human_bytes(int(rate)):>6}/s"
            suf += f"  {_duration((self.total - self.current) / rate):>6}"
        else:
            suf += " " * 18
        room = width - len(pre) - len(suf) - 5
        filled = int(room * percent / 100)
        mid = " ▕" + "█" * max(filled, 0) + " " * max(room - filled, 0) + "▏ "
        return pre + mid + suf


class Progress:
    """The lines of one operation."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.states: list[State] = []
        self._printed = 0  # plain mode: states already written
        self._drawn = 0  # terminal mode: lines on screen
        self._last = 0.0

    def add(self, state: State) -> None:
        if self.states:
            self.states[-1].stop()
        self.states.append(state)
        self.refresh(force=not self.tty)

    def refresh(self, *, force: bool = False) -> None:
        if not self.tty:
            # Everything but the newest line is final: write what has not been written.
            done = len(self.states) - 1
            self._flush_plain(done)
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._draw()

    def _flush_plain(self, upto: int) -> None:
        width = _width()
        while self._printed < upto:
            text = self.states[self._printed].render(width).rstrip()
            if text:
                self.out.write(text + "\n")
            self._printed += 1
        self.out.flush()

    def _draw(self) -> None:
        width = _width()
        buf = ["\033[?25l"]
        if self._drawn > 1:
            buf.append(f"\033[{self._drawn - 1}A")
        buf.append("\033[1G")
        height = shutil.get_terminal_size((80, 24)).lines
        shown = self.states[-height:]
        for i, s in enumerate(shown):
            buf.append(s.render(width) + "\033[K")
            if i < len(shown) - 1:
                buf.append("\n")
        buf.append("\033[?25h")
        self._drawn = len(shown)
        self.out.write("".join(buf))
        self.out.flush()

    def stop(self) -> None:
        """Final state of every line; the cursor ends on a fresh line."""
        for s in self.states:
            s.stop()
        if self.tty:
            if self.states:
                self._draw()
                self.out.write("\n")
                self.out.flush()
        else:
            self._flush_plain(len(self.states))


def _width() -> int:
    return shutil.get_terminal_size((80, 24)).columns
