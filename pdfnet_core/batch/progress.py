"""What a batch tells its user while it runs.

Three modes: a tqdm bar (done/total, images/s, ETA; the stage of the image being worked on) when
stdout is a terminal; plain lines (one per image, with rate and ETA) when it is not (logs, CI,
pipes); nothing but failures and the final list with ``--quiet``.  An image slower than
``slow_seconds`` also gets a line with its stage times (decode, depth, segmentation,
foreground, encode), and, without a bar, a line as each of its later stages starts, so a long
wait is never silent.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

STAGES = ("decode", "depth", "segmentation", "foreground", "encode")
SLOW_SECONDS = 10.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def stage_summary(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {stages[name]:.1f} s" for name in STAGES if name in stages)


class BatchProgress:
    """Counts finished inputs of ``total``; every method is called from the engine's main thread."""

    def __init__(self, total: int, *, quiet: bool = False, stream: TextIO | None = None,
                 bar: bool | None = None, slow_seconds: float = SLOW_SECONDS,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.done = total, 0
        self.quiet, self.slow_seconds, self.clock = quiet, slow_seconds, clock
        self.stream = stream if stream is not None else sys.stdout
        self.start = clock()
        self._current: tuple[str, float] | None = None   # the input at work and when it started
        self.bar = None
        if bar is None:
            bar = not quiet and total > 0 and getattr(self.stream, "isatty", lambda: False)()
        if bar:
            self.bar = tqdm(total=total, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A message that --quiet silences."""
        if not self.quiet:
            self._print(text)

    def error(self, text: str) -> None:
        """A message even --quiet shows."""
        self._print(text)

    def stage(self, name: str, stage: str) -> None:
        """``stage`` of input ``name`` has started: shown on the bar, or, without one, as a line
        once the input has taken ``slow_seconds`` (so a log shows where a slow image is)."""
        if self._current is None or self._current[0] != name:
            self._current = (name, self.clock())
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {stage}", refresh=True)
            return
        elapsed = self.clock() - self._current[1]
        if elapsed >= self.slow_seconds:
            self.note(f"  {name}: {stage} ({elapsed:.0f} s so far)")

    def rate(self) -> tuple[float, float | None]:
        """Images per second so far and the seconds left at that rate (None before the first)."""
        elapsed = max(self.clock() - self.start, 1e-9)
        per_second = self.done / elapsed
        left = (self.total - self.done) / per_second if per_second > 0 else None
        return per_second, left

    def finished(self, name: str, outcome: str, seconds: float, stages: dict[str, float] | None = None,
                 failed: bool = False) -> None:
        """Input ``name`` is finished: ``outcome`` is its output or its failure."""
        self.done += 1
        self._current = None
        if self.bar is not None:
            self.bar.update(1)
        line = f"[{self.done}/{self.total}] {name}: FAILED: {outcome}" if failed else \
            f"[{self.done}/{self.total}] {name} -> {outcome} ({seconds:.1f} s)"
        if self.bar is None and not failed:
            per_second, left = self.rate()
            line += f", {per_second:.2f} img/s" + ("" if left is None or self.done == self.total
                                                  else f", ETA {_clock(left)}")
        if failed:
            self.error(line)
        elif self.bar is None:
            self.note(line)
        if stages and seconds >= self.slow_seconds and not failed:
            self.note(f"  {name}: {stage_summary(stages)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
