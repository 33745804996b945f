"""``TrialRecord``: the attributes every trial writes, whatever backend ran it.

The search writes them as Optuna user attributes; the export, the report and the
benchmarks read them (the search <-> export contract). One dataclass owns the names so
that the in-process search, ``autocompress worker`` and Ray trials write the same ones.

>>> r = TrialRecord(policy={"layers": {}}, feasible=True, violations={"latency": -0.1},
...                 macs=10, bops=10, params=5, size_bytes=20, strategy="tpe", metric=0.9)
>>> attrs = r.to_attrs()
>>> attrs["feasible"], attrs["metric"], attrs["latency_basis"], attrs["pruned"]
(True, 0.9, None, False)
>>> sorted(set(attrs) - set(TrialRecord.__dataclass_fields__))
[]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import TrialState

COST_KEYS = ("macs", "bops", "params", "size_bytes")
# The states of a finished trial that counts: fine-tuned to the end, or stopped early.
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TIMING_KEYS = ("cost_s", "lut_measure_s", "measure_s", "apply_s", "finetune_s", "eval_s",
               "total_s")


@dataclass
class TrialRecord:
    """What one trial records about its candidate.

    - ``policy``: the exported form of the trained (or judged) policy;
    - ``feasible``: it met the budget on ``latency_basis`` (``measured`` on the target, or
      ``predicted``; None when the budget does not limit latency) and can be the pick;
    - ``violations``: ``{clause: cost / limit - 1}`` as judged (latency shifted by the guard
      of :mod:`autocompress.engine.judge`, so ``<= 0`` means met);
    - analytic costs; ``predicted_latency_ms`` (corrected, as screened), ``predicted_ratio``
      (the table's uncorrected speed ratio) and ``correction`` (the factor applied);
    - ``measured_latency_ms``, ``measured_baseline_ms`` (the uncompressed model timed
      alongside) and ``measured_ratio``, when timed on the target;
    - ``metric`` (None when not fine-tuned), ``pruned`` (stopped early);
    - seconds per stage; ``fill`` (how budget filling moved the proposal) and
      ``lut_measure_fill_s`` (the table's timings while it was filled); ``repeat_of`` (a proposal
      filled onto a policy an earlier trial evaluated: that trial's number).
    """

    policy: dict[str, Any] | None
    feasible: bool
    violations: dict[str, float]
    macs: int
    bops: int
    params: int
    size_bytes: int
    strategy: str
    metric: float | None = None
    pruned: bool = False
    predicted_latency_ms: float | None = None
    predicted_ratio: float | None = None
    correction: float | None = None
    latency_basis: str | None = None
    measured_latency_ms: float | None = None
    measured_baseline_ms: float | None = None
    measured_ratio: float | None = None
    cost_s: float = 0.0
    lut_measure_s: float = 0.0
    measure_s: float = 0.0
    apply_s: float = 0.0
    finetune_s: float = 0.0
    eval_s: float = 0.0
    total_s: float = 0.0
    fill: dict[str, Any] | None = None
    lut_measure_fill_s: float = 0.0
    repeat_of: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes, in one dict (one storage write on a journal file)."""
        attrs = asdict(self)
        extra = attrs.pop("extra")
        for key in TIMING_KEYS + ("lut_measure_fill_s",):
            attrs[key] = round(float(attrs[key]), 6)
        if attrs["repeat_of"] is None:
            del attrs["repeat_of"]
        return {**attrs, **extra}

    def evaluated(self) -> bool:
        """Fine-tuned and scored, or timed on the target: either way this policy was judged."""
        return self.metric is not None or self.latency_basis == "measured"


def judged(attrs: dict[str, Any]) -> bool:
    """:meth:`TrialRecord.evaluated` of a trial's stored attributes.

    >>> judged({"metric": None, "latency_basis": "measured"}), judged({"metric": None})
    (True, False)
    """
    return attrs.get("metric") is not None or attrs.get("latency_basis") == "measured"
