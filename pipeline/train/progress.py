"""Progress lines for long runs: loss, images/s and ETA, printed by rank 0.

Plain lines rather than a live bar: the training processes run under submitit, whose output goes
to log files that the launcher echoes (and DVC shows), where a redrawn bar would be noise.
"""
from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console

_console = Console(highlight=False, soft_wrap=True)


def log(message: str) -> None:
    _console.print(message, markup=False)


def fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # nan / inf before the first step
        return "?"
    return str(timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Tracks the optimiser steps done in this session and prints a line on request."""

    def __init__(self, name: str, total_steps: int, global_batch: int, done_steps: int = 0):
        self.name = name
        self.total = total_steps
        self.global_batch = global_batch
        self.start_steps = done_steps
        self.start = time.perf_counter()
        self.window_start = self.start
        self.window_images = 0

    def count(self, images: int) -> None:
        self.window_images += images

    def rate(self) -> float:
        dt = time.perf_counter() - self.window_start
        return self.window_images / dt if dt > 0 else 0.0

    def eta(self, step: int) -> float:
        done = step - self.start_steps
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.start) / done * (self.total - step)

    def line(self, epoch: int, epochs: int, step: int, loss: float, lr: float) -> str:
        text = (f"[{self.name}] epoch {epoch + 1}/{epochs} step {step}/{self.total} loss {loss:.4f} "
                f"lr {lr:.2e} {self.rate():.1f} img/s ETA {fmt_eta(self.eta(step))}")
        self.window_start, self.window_images = time.perf_counter(), 0
        return text
