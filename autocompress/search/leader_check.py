"""Measure a candidate on the target as soon as it would become the search's best.

The latency table predicts; ``verify.py`` measures the picks after the trials, when
it is too late to look elsewhere. On digits-distorted at ``latency<=0.25x``, TPE's
proposals filled to 5% under the limit by prediction were all too slow: the best
one ran at 0.335x of the uncompressed model where the table said 0.23x, the
check set all 20 aside, and the run ended without a pick.

So a trial whose metric would lead the search is built and timed right away, in
blocks alternating with the uncompressed model (as ``verify.py`` times its picks),
and judged on that measurement:

- over the budget (or less than ``MEASURED_GUARD`` under a latency limit: timings
  repeat only to a few percent), the trial is recorded as infeasible, with the measured
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
# A measured time meets a latency limit only this far under it. Two timings of one model
# on these 2 vCPUs differ by a few percent: in stop 13, 3 of the 15 TPE picks at
# digits-distorted latency<=0.35x/0.25x that met their budget in the loop (speed ratios
# 0.2493, 0.2494, 0.3441) ran 1.2-4% slower in the benchmark's fresh process and missed it.
MEASURED_GUARD = 0.03


def judge_measured(budget: Budget, measured: Costs, baseline: Costs,
                   guard: float = MEASURED_GUARD) -> tuple[bool, dict[str, float]]:
    """``(meets, violations)`` of measured costs: latency must sit ``guard`` under its limit.

    The violations are the budget's (``cost / limit - 1``), the latency one as measured.

    >>> from autocompress.cost import parse_budget
    >>> base = Costs(macs=1, bops=1, params=1, size_bytes=1, latency_ms=2.0)
    >>> judge_measured(parse_budget("latency<=0.5x"), base.with_latency(0.99), base)[0]
    False
    >>> judge_measured(parse_budget("latency<=0.5x"), base.with_latency(0.95), base)[0]
    True
    """
    meets, violations = budget.check(measured, baseline)
    if "latency" in violations and violations["latency"] > -guard:
        meets = False
    return meets, violations


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
    # The largest scale at which a policy that met the budget when measured is still
    # predicted to meet it (set by Objective.corner_in_reach after timing the cheapest
    # corner); below 1 when the table's predictions put that corner over the budget.
    cap: float | None = None

    @property
    def scale(self) -> float:
        """What later latency predictions are multiplied by: the measured ratios' median, at
        least 1 (a fast measurement never loosens predictions), at most :attr:`cap` (a corner
        that met the budget when timed stays predicted to meet it, even below 1).

        >>> lc = LeaderCheck(measure=lambda policy: (0.6, 2.0), ratios=[1.3, 1.2], cap=1.1)
        >>> lc.scale
        1.1
        >>> LeaderCheck(measure=lambda policy: (0.6, 2.0), ratios=[0.8], cap=0.9).scale
        0.9
        """
        scale = max(1.0, float(statistics.median(self.ratios))) if self.ratios else 1.0
        return min(scale, self.cap) if self.cap is not None else scale

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
        relative clauses are judged against the uncompressed model timed alongside, and
        latency with :data:`MEASURED_GUARD` (the constraints are shifted by it). A policy
        that meets it takes the lead with ``metric``.
        """
        meets, constraints, record = self.probe(policy, costs, budget, budget_baseline)
        if meets:
            self.leader = metric
        return meets, constraints, record

    def probe(self, policy: CompressionPolicy, costs: Costs, budget: Budget,
              budget_baseline: Costs) -> tuple[bool, dict[str, float], dict[str, Any]]:
        """:meth:`check` without a metric: measured, judged and learnt from, never a leader."""
        scale = self.scale
        measured_ms, baseline_ms = self.measure(policy)
        meets, constraints = judge_measured(budget, costs.with_latency(measured_ms),
                                            budget_baseline.with_latency(baseline_ms))
        # What the sampler is told: ``<= 0`` exactly when it met the limit with the guard.
        constraints = {k: v + MEASURED_GUARD if k == "latency" else v
                       for k, v in constraints.items()}
        predicted_ms = float(costs.latency_ms or 0.0) / scale
        record = {"measured_ms": measured_ms, "baseline_ms": baseline_ms,
                  "predicted_ms": predicted_ms, "scale": scale, "meets": bool(meets)}
        self._learn(record, budget_baseline.latency_ms)
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
