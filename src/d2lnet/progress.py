"""Progress of long work on stderr, on a terminal and off it.

On a terminal it is a tqdm bar. Elsewhere (a log file, a batch scheduler's capture, a pipe)
a bar's carriage returns make one unreadable line, so it is a plain line every few seconds
instead, and one at the end if there were any: work that ends within seconds says nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 5.0


class Progress:
    """Counts ``total`` items of work (steps, images, tiles) from ``initial``.

    Args:
        total: the number of items, or None if unknown.
        desc: what is being done, at the start of each line.
        unit: the item's name (``"step"``, ``"image"``, ``"tile"``).
        initial: items already done (a resumed run).
        enabled: False shows nothing (another process reports).
        stream: where to write (default: stderr).
        every: seconds between plain lines off a terminal (default :data:`PLAIN_EVERY_S`).
        transient: on a terminal, remove the bar when done (work within a larger piece of work).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float | None = None,
        transient: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.every = PLAIN_EVERY_S if every is None else every
        self.done = self._last_done = initial
        self._lines = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        self._bar = None
        if enabled and isatty is not None and isatty():
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=not transient
            )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, **values: object) -> None:
        """Figures shown after the count (``loss=0.012``)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, text: str) -> None:
        """A message, above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._lines and self.done > self._last_done:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> None:
        now = time.monotonic()
        rate = (self.done - self._last_done) / max(now - self._last, 1e-9)
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", {_duration((self.total - self.done) / rate)} left"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}s{percent}, {rate:.3g} {self.unit}s/s{eta}{extra}", file=self.stream, flush=True)
        self._last, self._last_done = now, self.done
        self._lines += 1


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"
