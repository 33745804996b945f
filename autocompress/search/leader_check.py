"""Measure a candidate on the target as soon as it would become the search's best.

The latency table predicts; ``verify.py`` measures the picks after the trials, when
it is too late to look elsewhere. On digits-distorted at ``latency<=0.25x``, TPE's
proposals filled to 5% under the limit by prediction were all too slow: the best
one ran at 0.335x of the uncompressed model where the table said 0.23x, the
check set all 20 aside, and the run ended without a pick.

So a trial whose metric would lead the search is built and timed right away, in
blocks alternating with the uncompressed model (as ``verify.py`` times its picks),
and judged on that measurement:

- over the budget, the trial is recorded as infeasible, with the measured
  constraint, so it cannot be the pick and the sampler learns where the edge
  really is;
- every measurement adds a sample to a *scale*, the median of measured over
  predicted speed ratios (never below 1: a measurement never loosens the budget),
  by which the objective multiplies later predictions, so screening and budget
  filling aim at the measured edge.

Trials record ``latency_check`` (``measured_ms``, ``baseline_ms``, ``predicted_ms``
before scaling, ``scale``, ``meets``) and ``measure_s``; a resumed run restores the
leader and the scale from them. It runs in the Optuna backend's processes (each
worker keeps its own scale); Ray trials run without it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from autocompress.cost import Budget, Costs
from autocompress.policy import CompressionPolicy

# (the candidate's ms, the uncompressed model's ms), timed in alternating blocks
MeasureFn = Callable[[CompressionPolicy], tuple[float, float]]
ATTR = "latency_check"


@dataclass
class LeaderCheck:
    """The state of the in-loop measurements of one search process.

    >>> lc = LeaderCheck(measure=lambda policy: (0.6, 2.0))
    >>> lc.leads(0.9), lc.scale
    (True, 1.0)
    >>> lc.ratios += [1.3, 0.9, 1.1]
    >>> round(lc.scale, 3)
    1.1
    """

    measure: MeasureFn
    higher_is_better: bool = True
    leader: float | None = None
    ratios: list[float] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """What later latency predictions are multiplied by (>= 1)."""
        return max(1.0, float(statistics.median(self.ratios))) if self.ratios else 1.0

    def leads(self, metric: float) -> bool:
        """Whether ``metric`` beats every candidate that met the budget so far."""
        if self.leader is None:
            return True
        return metric > self.leader if self.higher_is_better else metric < self.leader

    def check(self, policy: CompressionPolicy, costs: Costs, budget: Budget,
              budget_baseline: Costs, metric: float) -> tuple[bool, dict[str, float],
                                                              dict[str, Any]]:
        """Measure ``policy`` and judge the budget on it: ``(meets, constraints, record)``.

        ``costs`` are the trial's predicted costs (latency scaled by :attr:`scale`);
        relative clauses are judged against the uncompressed model timed alongside.
        """
        scale = self.scale
        measured_ms, baseline_ms = self.measure(policy)
        meets, constraints = budget.check(costs.with_latency(measured_ms),
                                          budget_baseline.with_latency(baseline_ms))
        predicted_ms = float(costs.latency_ms or 0.0) / scale
        record = {"measured_ms": measured_ms, "baseline_ms": baseline_ms,
                  "predicted_ms": predicted_ms, "scale": scale, "meets": bool(meets)}
        self._learn(record, budget_baseline.latency_ms)
        if meets:
            self.leader = metric
        return bool(meets), constraints, record

    def _learn(self, record: dict[str, Any], budget_baseline_ms: float | None) -> None:
        predicted, base = record.get("predicted_ms"), record.get("baseline_ms")
        if not predicted or not base or not budget_baseline_ms:
            return
        self.ratios.append((record["measured_ms"] / base) / (predicted / budget_baseline_ms))

    def restore(self, trials: Iterable[Any], budget_baseline_ms: float | None) -> None:
        """Take up the leader and the scale from a resumed study's finished trials."""
        for t in trials:
            attrs = t.user_attrs
            record = attrs.get(ATTR)
            if isinstance(record, dict):
                self._learn(record, budget_baseline_ms)
            metric = attrs.get("metric")
            if attrs.get("feasible") and metric is not None and self.leads(float(metric)):
                self.leader = float(metric)
