"""Progress on stderr for long runs: a rich bar on a terminal, plain lines for logs."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from gradscope.options import ProgressMode


class Progress:
    """Progress on stderr: a rich bar (repeats/s or steps/s, ETA) when stderr is a terminal,
    plain lines with ``--progress log`` (at the first update, then every 10 s and at the end),
    nothing otherwise.

    Started at the first update, so that worker processes are forked before its thread exists.
    """

    mode: ProgressMode = ProgressMode.auto
    LOG_EVERY = 10.0

    def __init__(self, total: int, unit: str = "rep/s", label: str = "simulate") -> None:
        self.total = total
        self.unit = unit
        self.label = label
        self.bar: Any = None
        self.task: Any = None
        self.last_log: float | None = None
        self.start_time = 0.0

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        outer = self

        class _Rate(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                unit = outer.unit
                return Text("" if not speed or not math.isfinite(speed) else f"{speed:.0f} {unit}")

        self.bar = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(""),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=self.total)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            self._start()
        self.bar.update(self.task, completed=done)

    def log(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.last_log is None:
            self.start_time = now
        elif now - self.last_log < self.LOG_EVERY and done < total:
            return
        self.last_log = now
        elapsed = now - self.start_time
        rate = f", {done / elapsed:.3g} {self.unit}" if done and elapsed > 0 else ""
        sys.stderr.write(f"{self.label}: {done}/{total}{rate}\n")
        sys.stderr.flush()

    def __enter__(self) -> Any:
        if self.mode is ProgressMode.log:
            return self.log
        if self.mode is ProgressMode.none or not sys.stderr.isatty():
            return lambda done, total: None
        return self.update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
