"""One judgment of the budget for every trial: measured on the target when it can be.

A latency table predicts; only the target measures. So, when the search runs on the
target machine, every candidate that passes screening is built (no fine-tune: weights do
not change the run time) and timed on the target, in blocks alternating with the
uncompressed model (:func:`autocompress.cost.timing.paired_model_ms`), *before* its
fine-tune. That measurement is the trial's judgment: the constraint Optuna and Ray see,
and whether the trial can be the pick. A candidate that misses when measured is recorded
as infeasible and never fine-tuned.

Predictions do two things only: they screen candidates before anything is built, and they
place proposals (budget filling). They never decide feasibility once a measurement exists.
They are corrected from measurements in one place, :class:`Correction`: the median of
measured over predicted speed ratios of the candidates timed so far. What is left after
the correction, its spread, is how far under the guarded limit the fill places proposals:
aimed at the limit itself, half of them would miss when timed.

One margin, :data:`MEASURED_GUARD`: a latency must sit that far under its limit to meet
it, since two timings of one model repeat only to a few percent. Screening lets a
candidate through when its corrected prediction is within :data:`PREDICTION_TOLERANCE`
of that: single predictions are off by that much, and a timing settles it for the price
of a second or so, not a fine-tune.

A relative clause (``latency<=0.5x``) compares a ratio of two times of the same kind: a
measured candidate against the uncompressed model timed alongside it, a prediction
against the latency table's own time of the uncompressed model.

Away from the target (:attr:`Judge.measure` None: ``search --lut`` on other machines,
or ``measure: false``) the corrected prediction decides, with the same margin, and the
trial says so (``latency_basis: predicted``).

>>> from autocompress.cost import parse_budget
>>> from autocompress.cost.analytic import Costs
>>> base = Costs(macs=100, bops=100, params=10, size_bytes=40, latency_ms=2.0)
>>> judge = Judge(parse_budget("latency<=0.5x"), base, measure=None)
>>> judge.screen(base.with_latency(0.95)).feasible  # 0.475x: 5% under, more than the guard
True
>>> judge.screen(base.with_latency(0.99)).feasible  # 1% under: not by the guard
False
>>> Judge(parse_budget("latency<=0.5x"), base, measure=lambda p: (1.0, 2.0)).screen(
...     base.with_latency(1.05)).feasible  # on the target: close enough to be timed
True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from autocompress.cost import Budget, Costs, Target
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy
from autocompress.tasks.base import Task

# (the candidate's ms, the uncompressed model's ms), timed in alternating blocks on the target
MeasureFn = Callable[[CompressionPolicy], tuple[float, float]]
Basis = Literal["measured", "predicted"]
# A latency meets its limit only this far under it: two timings of one model repeat only to a
# few percent, and a pick on the line would miss when the export times it again.
MEASURED_GUARD = 0.03
# A corrected prediction this far over the guarded limit is still timed on the target: the
# table's single predictions are off by up to about this much.
PREDICTION_TOLERANCE = 0.10
LATENCY = "latency"
# The correction's prior weight: as many timed candidates that matched their predictions.
PRIOR_TIMINGS = 2
# The spread assumed until timings give one: the latency table's error on random policies at
# the default target (mean absolute error 2.9-5.7% on resnet18, digits and all-MiniLM-L6-v2,
# benchmarks/latency_fidelity.py). Aimed at the limit with none, the first TPE proposals of a
# MiniLM search missed it by 1-4% when timed, three in a row.
PRIOR_SPREAD = 0.05


@dataclass
class Correction:
    """Measured over predicted speed ratios; their median multiplies later predictions.

    Keyed by trial, so reading the same trial twice (a shared study, a resumed run) counts
    it once. Up to :data:`PRIOR_TIMINGS` timings, the median (of the logs) is shrunk toward 1
    as if as many timed candidates had matched their predictions: one timing taken in a slow
    moment must not move every later prediction by its whole error. From three on, the
    median stands alone, so the correction converges to what the target shows.

    >>> c = Correction()
    >>> c.factor
    1.0
    >>> c.observe("1", measured_ratio=0.60, predicted_ratio=0.30)
    >>> round(c.factor, 3)  # one timing 2x its prediction: a third of the way, in logs
    1.26
    >>> for k in "23456789":
    ...     c.observe(k, measured_ratio=0.60, predicted_ratio=0.30)
    >>> c.observe("9", measured_ratio=0.60, predicted_ratio=0.30)  # the same trial again
    >>> round(c.factor, 3), len(c.ratios)  # nine timings agree: all the way
    (2.0, 9)
    """

    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def factor(self) -> float:
        """What latency predictions are multiplied by (1 before any measurement)."""
        n = len(self.ratios)
        if not n:
            return 1.0
        log_median = statistics.median(math.log(r) for r in self.ratios.values())
        if n > PRIOR_TIMINGS:  # a median of three or more stands on its own
            return float(math.exp(log_median))
        return float(math.exp(log_median * n / (n + PRIOR_TIMINGS)))

    @property
    def spread(self) -> float:
        """How far one corrected prediction is off, as a fraction: the robust standard
        deviation (1.4826 x the median absolute deviation) of the logs of the ratios around
        their median; :data:`PRIOR_SPREAD` until :data:`PRIOR_TIMINGS` + 1 timings give a
        spread to estimate.

        >>> c = Correction()
        >>> for k, r in enumerate([1.00, 1.10, 1.05, 0.95, 1.05]):
        ...     c.observe(str(k), measured_ratio=r, predicted_ratio=1.0)
        >>> round(c.spread, 3)
        0.071
        """
        n = len(self.ratios)
        if n <= PRIOR_TIMINGS:
            return PRIOR_SPREAD
        logs = [math.log(r) for r in self.ratios.values()]
        mid = statistics.median(logs)
        return float(math.exp(1.4826 * statistics.median(abs(x - mid) for x in logs)) - 1.0)

    def observe(self, key: str, measured_ratio: float, predicted_ratio: float) -> None:
        """Learn from one timed candidate (both ratios to the uncompressed model)."""
        if measured_ratio > 0 and predicted_ratio > 0:
            self.ratios[str(key)] = measured_ratio / predicted_ratio

    def observe_trials(self, trials: Iterable[Any]) -> None:
        """Learn from finished trials' records (``measured_ratio`` and ``predicted_ratio``)."""
        for t in trials:
            attrs = t.user_attrs
            if attrs.get("latency_basis") == "measured" and attrs.get("predicted_ratio"):
                self.observe(str(t.number), float(attrs["measured_ratio"]),
                             float(attrs["predicted_ratio"]))


@dataclass(frozen=True)
class Judgment:
    """A candidate's verdict: ``constraints`` are what the sampler is told (``<= 0``: met)."""

    feasible: bool
    constraints: dict[str, float]
    basis: Basis | None  # how the latency clause was judged (None: the budget has none)
    measured_ms: float | None = None
    baseline_ms: float | None = None  # the uncompressed model timed alongside

    @property
    def measured_ratio(self) -> float | None:
        if self.measured_ms is None or not self.baseline_ms:
            return None
        return self.measured_ms / self.baseline_ms


class Judge:
    """Judges candidates against one parsed budget (see the module docstring).

    ``reference``: the uncompressed model's costs, with the latency table's time of it as
    ``latency_ms`` (what predicted ratios are relative to). ``measure``: times a policy's
    model on the target next to the uncompressed model; None away from the target.
    """

    def __init__(self, budget: Budget, reference: Costs, measure: MeasureFn | None) -> None:
        self.budget = budget
        self.reference = reference
        self.measure = measure
        self.correction = Correction()
        # Timings taken before a trial existed (the warm starts' placement), by policy digest.
        self._timed: dict[str, tuple[float, float]] = {}

    def remember(self, policy: CompressionPolicy, measured_ms: float, baseline_ms: float) -> None:
        """Keep a timing of ``policy`` for its trial's :meth:`time`: a warm start placed by a
        timing is judged on that timing, not on a second one whose noise can undo it."""
        from autocompress.engine.taken import policy_digest

        self._timed[policy_digest(policy.to_dict())] = (measured_ms, baseline_ms)

    def remembered_ratio(self, policy: CompressionPolicy) -> float | None:
        """The measured speed ratio of a timing :meth:`remember` keeps for ``policy``."""
        from autocompress.engine.taken import policy_digest

        known = self._timed.get(policy_digest(policy.to_dict()))
        return known[0] / known[1] if known is not None and known[1] else None

    @property
    def measures(self) -> bool:
        """Whether trials are timed on the target (the budget limits latency and we are there)."""
        return self.measure is not None and self.budget.needs_latency

    def corrected(self, costs: Costs) -> Costs:
        """``costs`` with the latency prediction corrected by :class:`Correction`."""
        if costs.latency_ms is None:
            return costs
        return costs.with_latency(costs.latency_ms * self.correction.factor)

    def predicted_ratio(self, costs: Costs) -> float | None:
        """A (corrected) prediction's speed ratio to the uncompressed model."""
        if costs.latency_ms is None or not self.reference.latency_ms:
            return None
        return costs.latency_ms / self.reference.latency_ms

    def _told(self, violations: dict[str, float]) -> dict[str, float]:
        """What the sampler is told: latency ``<= 0`` exactly when it met with the guard."""
        return {k: float(v) + MEASURED_GUARD if k == LATENCY else float(v)
                for k, v in violations.items()}

    def screen(self, costs: Costs) -> Judgment:
        """The verdict on (corrected) predicted costs: worth building and timing, or not.

        On the target a latency within :data:`PREDICTION_TOLERANCE` of the guarded limit
        passes (the timing decides); away from it the prediction must meet the guard.
        Analytic clauses (MACs, size, BOPs) are exact and must be met.
        """
        _, violations = self.budget.check(costs, self.reference)
        told = self._told(violations)
        slack = PREDICTION_TOLERANCE if self.measures else 0.0
        ok = all(v <= (slack if k == LATENCY else 0.0) for k, v in told.items())
        basis: Basis | None = "predicted" if LATENCY in violations else None
        return Judgment(feasible=ok, constraints=told, basis=basis)

    def judge_measured(self, costs: Costs, measured_ms: float, baseline_ms: float) -> Judgment:
        """The verdict on a timing: ``costs`` (analytic) with the measured latency, a relative
        clause against the uncompressed model timed alongside.

        >>> from autocompress.cost import parse_budget
        >>> base = Costs(macs=1, bops=1, params=1, size_bytes=1, latency_ms=2.0)
        >>> j = Judge(parse_budget("latency<=0.5x"), base, measure=None)
        >>> j.judge_measured(base, 0.99, 2.0).feasible, j.judge_measured(base, 0.95, 2.0).feasible
        (False, True)
        """
        measured = costs.with_latency(measured_ms)
        _, violations = self.budget.check(measured, self.reference.with_latency(baseline_ms))
        told = self._told(violations)
        return Judgment(feasible=all(v <= 0 for v in told.values()), constraints=told,
                        basis="measured", measured_ms=float(measured_ms),
                        baseline_ms=float(baseline_ms))

    def time(self, policy: CompressionPolicy, costs: Costs, key: str,
             predicted_ratio: float | None) -> Judgment:
        """Time ``policy`` on the target, judge it, and learn the correction from it.

        ``costs``: its analytic costs; ``predicted_ratio``: the table's uncorrected speed
        ratio for it; ``key``: the trial's name in the correction.
        """
        assert self.measure is not None
        from autocompress.engine.taken import policy_digest

        known = self._timed.pop(policy_digest(policy.to_dict()), None) if self._timed else None
        measured_ms, baseline_ms = known if known is not None else self.measure(policy)
        verdict = self.judge_measured(costs, measured_ms, baseline_ms)
        if predicted_ratio is not None and verdict.measured_ratio is not None:
            self.correction.observe(key, verdict.measured_ratio, predicted_ratio)
        return verdict


@dataclass(frozen=True)
class PolicyTimer:
    """A :data:`MeasureFn` on ``target``: the model ``policy`` makes, built without fine-tuning
    (weights do not change the run time), timed next to the task's uncompressed model
    (:func:`autocompress.cost.timing.paired_model_ms`). A plain object, so Ray ships it."""

    task: Task
    inventory: LayerInventory
    target: Target

    #: The uncompressed model's ms on the target, when known: sets how many runs a timing takes.
    reference_ms: float | None = None

    def __call__(self, policy: CompressionPolicy) -> tuple[float, float]:
        from autocompress.cost.timing import paired_model_ms, runs_for
        from autocompress.methods import apply_policy

        model = apply_policy(self.task.model, policy, self.task.example_input,
                             inventory=self.inventory)
        return paired_model_ms(model, self.task.model, self.task.example_input, self.target,
                               runs=runs_for(self.reference_ms))
