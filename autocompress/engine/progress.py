"""Progress on stderr: a bar of trials, and a spinner while a slow step runs.

Where stderr is not a terminal (a batch job's log), rich draws neither until the end, so
each update is written as one line instead (``search 3/6 00:14:02 best ...``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _stderr() -> tuple[Any, bool]:
    """The console progress goes to (stderr), and whether it can draw live (a terminal)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console, bool(console.is_terminal)


def best_cost(attrs: Mapping[str, Any], cost_metric: str = "latency") -> str:
    """How the bar shows the best trial's cost, from its record (``TrialRecord`` attributes).

    A latency reads as the speed ratio the trial was judged on: measured on the target when it
    was timed there, else the table's prediction, labelled so.

    >>> best_cost({"latency_basis": "measured", "measured_ratio": 0.3712,
    ...            "predicted_latency_ms": 0.41})
    ' at 0.371x measured'
    >>> best_cost({"latency_basis": "predicted", "predicted_latency_ms": 0.41})
    ' at 0.41 ms (predicted)'
    >>> best_cost({"size_bytes": 2048}, "size"), best_cost({})
    (' at 2048 size_bytes', '')
    """
    if cost_metric == "latency":
        if attrs.get("latency_basis") == "measured" and attrs.get("measured_ratio"):
            return f" at {float(attrs['measured_ratio']):.3f}x measured"
        ms = attrs.get("predicted_latency_ms")
        return "" if ms is None else f" at {float(ms):.4g} ms (predicted)"
    from autocompress.cost.analytic import METRICS

    key = METRICS.get(cost_metric, cost_metric)
    value = attrs.get(key)
    return "" if value is None else f" at {float(value):.4g} {key}"


@dataclass
class BestSoFar:
    """The best feasible trial a search bar has seen, by metric; a tie goes to the faster
    trial, as the pick's does (:func:`autocompress.pareto.speed_ratio`).

    >>> best = BestSoFar(higher_is_better=True)
    >>> best.offer(0.98, {"latency_basis": "measured", "measured_ratio": 0.45})
    >>> best.offer(0.98, {"latency_basis": "measured", "measured_ratio": 0.40})
    >>> best.offer(0.97, {"latency_basis": "measured", "measured_ratio": 0.30})
    >>> best.text("accuracy")
    'best accuracy 0.9800 at 0.400x measured'
    """

    higher_is_better: bool
    cost_metric: str = "latency"
    metric: float | None = None
    ratio: float = math.inf
    cost: str = ""

    def offer(self, metric: float, attrs: Mapping[str, Any]) -> None:
        """Keep this trial (its metric and record) when it is the best so far."""
        from autocompress.pareto import speed_ratio

        ratio = speed_ratio(attrs)
        if self.metric is None or (metric > self.metric if self.higher_is_better
                                   else metric < self.metric) or (
                metric == self.metric and ratio < self.ratio):
            self.metric, self.ratio = metric, ratio
            self.cost = best_cost(attrs, self.cost_metric)

    def text(self, metric_name: str) -> str | None:
        """``best <metric> <value> at <cost>``, or None before any feasible trial."""
        if self.metric is None:
            return None
        return f"best {metric_name} {self.metric:.4f}{self.cost}"


class TrialBar:
    """Trials done out of ``total`` with a line of information (nothing when not ``enabled``).

    >>> bar = TrialBar("search", total=3, done=0, enabled=False)
    >>> with bar:
    ...     bar.update(1, "best accuracy 0.9")
    >>> bar.done
    1
    """

    def __init__(self, label: str, total: int, done: int, enabled: bool) -> None:
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self._bar: Any = None
        self._task: Any = None
        self._lines: Any = None
        self._start = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the callback that holds one
        return {**self.__dict__, "_bar": None, "_task": None, "_lines": None}

    def start(self, info: str = "") -> None:
        if not self.enabled:
            return
        console, live = _stderr()
        if not live:
            self._lines, self._start = console, time.monotonic()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.done,
                                        info=info)

    def update(self, done: int, info: str, line: bool = True) -> None:
        """Set trials done and the information; ``line``: in a log, write it (a trial ended)."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        elif self._lines is not None and line:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self._start))
            self._lines.print(f"{self.label} {done}/{self.total} {elapsed} {info}",
                              highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = self._lines = None

    def __enter__(self) -> TrialBar:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class slow_step:
    """A spinner with ``text`` while a slow step runs (nothing when not ``enabled``); in a
    log, the text as one line."""

    def __init__(self, enabled: bool, text: str) -> None:
        self.enabled, self.text = enabled, text
        self._cm: Any = None

    def __enter__(self) -> None:
        if not self.enabled:
            return
        console, live = _stderr()
        if not live:
            console.print(self.text, highlight=False, soft_wrap=True)
            return
        self._cm = console.status(self.text)
        self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)
