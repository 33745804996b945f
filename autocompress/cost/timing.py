"""Timing whole models on the target, one timing at a time on each host.

Two timings that overlap on one machine slow each other down, and whichever reads the
slower spell decides a budget. Every timing autocompress takes (the latency table's layers
and calibration models, a candidate paired with the uncompressed model, the export's fresh
measurement) therefore holds a host-wide lock (:func:`timing_lock`, an ``flock`` on a file
in the temporary folder), so workers of one study on one host take turns. Another worker's
*fine-tune* is not held back by it: it keeps running on the same cores and slows both
sides of a paired timing alike, which a ratio of the two cancels to first order, but the
absolute milliseconds it reads are slower than on an idle machine.

>>> with timing_lock(), timing_lock():  # re-entrant within a process
...     pass
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from autocompress.cost.target import Target

LOCK_ENV = "AUTOCOMPRESS_TIMING_LOCK"
# Whole-model timings: runs split into blocks, the smallest block median kept (one block on a
# shared machine can come out several times too slow; the smallest block median cannot).
WHOLE_MODEL_RUNS = 100
MODEL_BLOCKS = 10

_local = threading.local()
_guard = threading.Lock()


def lock_path() -> Path:
    """The lock file every process on this host shares (``$AUTOCOMPRESS_TIMING_LOCK`` overrides).

    >>> lock_path().name
    'autocompress-timing.lock'
    """
    override = os.environ.get(LOCK_ENV)
    return Path(override) if override else Path(tempfile.gettempdir()) / "autocompress-timing.lock"


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """Hold the host-wide timing lock (blocking); nested calls in one thread hold it once."""
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _guard, open(path, "a+") as fh:  # threads of one process take turns too
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def whole_model_ms(model: nn.Module, example_input: Any, target: Target) -> float:
    """``model``'s latency on ``target`` (ms): the smallest of 10 block medians of 100 runs.

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> whole_model_ms(nn.Linear(8, 8), torch.zeros(1, 8), parse_target("torch-1t-b2")) > 0
    True
    """
    from autocompress.cost.latency import measure_latency

    with timing_lock():
        return float(measure_latency(model, example_input, target, runs=WHOLE_MODEL_RUNS,
                                     blocks=MODEL_BLOCKS).stable_ms)


def paired_model_ms(model: nn.Module, reference: nn.Module, example_input: Any,
                    target: Target) -> tuple[float, float]:
    """``(model's ms, reference's ms)`` on ``target``, timed in alternating blocks.

    Timed seconds apart, each side's smallest block median shares the machine's speed
    of those minutes, so their ratio is what a relative budget compares.

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> big, small = nn.Linear(256, 256), nn.Linear(256, 8)
    >>> mine, ref = paired_model_ms(small, big, torch.zeros(1, 256), parse_target("torch-1t-b8"))
    >>> mine > 0 and ref > 0
    True
    """
    from autocompress.cost.latency import measure_models_interleaved

    with timing_lock():
        mine, ref = measure_models_interleaved([model, reference], example_input, target,
                                               runs=WHOLE_MODEL_RUNS, blocks=MODEL_BLOCKS)
    return float(mine.stable_ms), float(ref.stable_ms)
