"""Where latency is measured: a runtime, a thread count and a batch size.

A target is written as a short string a user can type, ``<runtime>[-cpu][-<N>t][-b<B>]``:
``ort``, ``torch``, ``ort-cpu-2t``, ``ort-cpu-2t-b64``, ``torch-4t-b1``. Parts left out
take their defaults: threads ``min(4, os.cpu_count() - 1)`` and the task's
``target_batch_size`` (filled in by :meth:`Target.with_batch`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Literal

from autocompress.errors import TargetError

Runtime = Literal["torch", "ort"]
RUNTIMES: tuple[str, ...] = ("torch", "ort")

GRAMMAR = (
    'expected <runtime>[-cpu][-<threads>t][-b<batch>] with runtime one of torch|ort, '
    'e.g. "ort", "torch-2t", "ort-cpu-2t-b64"'
)

_PATTERN = re.compile(r"^(?P<runtime>[a-z]+)(?:-cpu)?(?:-(?P<threads>\d+)t)?(?:-b(?P<batch>\d+))?$")


def default_threads() -> int:
    """Intra-op threads used when a target names none: one core fewer than the machine has,
    at least 1 and at most 4.

    A timing on every core competes with everything else the machine runs (the search's
    own process, other workers, the system) and does not repeat itself, so no latency
    model can hold there (BENCHMARKS.md, latency-model fidelity); four threads
    is where small-batch CPU inference stops scaling on most machines.
    """
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class Target:
    """A latency target: runtime (``torch`` eager or ``ort`` ONNX Runtime CPU), threads, batch.

    ``batch=None`` means "the task's ``target_batch_size``"; :meth:`with_batch`
    fills it in before anything is measured.

    >>> Target("ort", threads=2, batch=64).name
    'ort-cpu-2t-b64'
    >>> Target("ort", threads=2).with_batch(1).batch
    1
    """

    runtime: Runtime = "ort"
    threads: int = 0  # 0 = default_threads(); resolved in __post_init__
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise TargetError(f"unknown runtime {self.runtime!r}; {GRAMMAR}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise TargetError(f"threads must be an integer >= 1, got {self.threads!r}; {GRAMMAR}")
        if self.threads == 0:
            object.__setattr__(self, "threads", default_threads())
        if self.batch is not None and (not isinstance(self.batch, int) or self.batch < 1):
            raise TargetError(f"batch must be an integer >= 1, got {self.batch!r}; {GRAMMAR}")

    @property
    def name(self) -> str:
        """Canonical string form; :func:`parse_target` reads it back."""
        batch = f"-b{self.batch}" if self.batch is not None else ""
        return f"{self.runtime}-cpu-{self.threads}t{batch}"

    def __str__(self) -> str:
        return self.name

    def with_batch(self, default: int) -> Target:
        """This target with its batch filled in (kept when already set)."""
        return self if self.batch is not None else replace(self, batch=int(default))

    def require_batch(self) -> int:
        """The batch size, or a :class:`TargetError` when it was never resolved."""
        if self.batch is None:
            raise TargetError(
                f"target {self.name!r} has no batch size; give one as -b<batch> "
                "(e.g. ort-cpu-2t-b64) or resolve it with Target.with_batch(task.target_batch_size)"
            )
        return self.batch


def parse_target(
    text: str | Target, threads: int | None = None, batch: int | None = None
) -> Target:
    """Parse a target string; ``threads``/``batch`` (e.g. CLI flags) override what it names.

    >>> parse_target("ort-cpu-2t-b64")
    Target(runtime='ort', threads=2, batch=64)
    >>> parse_target("torch", threads=1).name
    'torch-cpu-1t'
    >>> parse_target("tflite")
    Traceback (most recent call last):
    ...
    autocompress.errors.TargetError: unknown target 'tflite'; expected <runtime>[-cpu][-<threads>t][-b<batch>] with runtime one of torch|ort, e.g. "ort", "torch-2t", "ort-cpu-2t-b64"
    """
    if isinstance(text, Target):
        target = text
    else:
        if not isinstance(text, str):
            raise TargetError(f"a target must be a string, got {type(text).__name__}; {GRAMMAR}")
        m = _PATTERN.match(text.strip().lower())
        if not m or m["runtime"] not in RUNTIMES:
            raise TargetError(f"unknown target {text!r}; {GRAMMAR}")
        if (m["threads"] and int(m["threads"]) < 1) or (m["batch"] and int(m["batch"]) < 1):
            raise TargetError(f"threads and batch must be >= 1 in {text!r}; {GRAMMAR}")
        target = Target(
            runtime=m["runtime"],  # type: ignore[arg-type]
            threads=int(m["threads"]) if m["threads"] else 0,
            batch=int(m["batch"]) if m["batch"] else None,
        )
    if threads is not None:
        if threads < 1:
            raise TargetError(f"threads must be >= 1, got {threads}; {GRAMMAR}")
        target = replace(target, threads=threads)
    if batch is not None:
        if batch < 1:
            raise TargetError(f"batch must be >= 1, got {batch}; {GRAMMAR}")
        target = replace(target, batch=batch)
    return target
