"""Progress of long work on a terminal: the CLI's simulate, snapshot and
restore commands show it on stderr."""

from __future__ import annotations

import time
from typing import TextIO


class ProgressLine:
    """A progress callback ``(done, total)``: one line that updates in place
    on a TTY (at most 10 times a second), else a new line every 10%."""

    def __init__(self, stream: TextIO, label: str, unit: str = "items") -> None:
        self.stream = stream
        self.label = label
        self.unit = unit
        self.tty = stream.isatty()
        self.last_tenth = -1
        self.last_draw = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
        finished = done >= total
        counts = f"({done:,}/{total:,} {self.unit})"
        if self.tty:
            now = time.monotonic()
            if not finished and now - self.last_draw < 0.1:
                return
            self.last_draw = now
            end = f" {now - self.start:.1f}s\n" if finished else ""
            self.stream.write(f"\r{self.label}: {pct:5.1f}% {counts}{end}")
        else:
            tenth = int(pct // 10)
            if tenth <= self.last_tenth:
                return
            self.last_tenth = tenth
            self.stream.write(f"{self.label}: {pct:3.0f}% {counts}\n")
        self.stream.flush()
