"""The search objective, free of any backend: policy -> costs -> (feasible?) -> fine-tune -> score.

For each candidate policy:

1. predict its costs (analytic MACs/BOPs/params/size, plus the latency
   table's prediction when the budget limits latency);
2. check the budget; an infeasible candidate is recorded with its costs and
   constraint values and gets the worst metric (0.0 for accuracy-like
   metrics) WITHOUT being applied or fine-tuned;
3. otherwise apply it, fine-tune it with KD from the uncompressed model
   (:func:`autocompress.evaluate.compress_and_score`), passing intermediate
   metrics to ``report`` (a pruner may stop it), and score it on the fixed
   validation subset.

The Optuna backend (and the Ray backend) turn a :class:`TrialOutcome` into
trial values, ``set_constraint`` calls and user attributes (the names are the
search <-> export contract).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from autocompress.cost import Budget, Costs, analytic_costs
from autocompress.evaluate import FinetuneSettings, Report, compress_and_score, val_subset
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy
from autocompress.search.baselines import params_key
from autocompress.search.leader_check import ATTR as LEADER_CHECK_ATTR
from autocompress.search.leader_check import LeaderCheck
from autocompress.space import ResolvedSpace
from autocompress.tasks.base import Task

LatencyFn = Callable[[CompressionPolicy], float]
COST_KEYS = ("macs", "bops", "params", "size_bytes")
SCREEN_MEMO_SIZE = 100_000  # fill predictions kept per run (a few hundred bytes each)


@dataclass(frozen=True)
class Screening:
    """A candidate's predicted costs and budget check (:meth:`Objective.screen`).

    ``cost_s``: seconds the prediction took, ``lut_measure_s`` of which the latency
    table spent measuring layer shapes it had not seen.
    """

    costs: Costs
    feasible: bool
    constraints: dict[str, float]
    cost_s: float
    lut_measure_s: float


@dataclass
class TrialOutcome:
    """Everything one evaluated candidate produced.

    ``values`` are the objective values (constrained: ``[metric]``; pareto:
    ``[metric, cost]``); ``constraints`` one value per budget metric
    (``<= 0`` = met); ``user_attrs`` the contract's per-trial attributes.
    """

    policy: CompressionPolicy
    costs: Costs
    feasible: bool
    constraints: dict[str, float]
    metric: float | None
    values: list[float]
    pruned: bool = False
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    user_attrs: dict[str, Any] = field(default_factory=dict)


class Objective:
    """Scores candidate policies for one run; holds everything that stays fixed across trials.

    ``baseline`` is the uncompressed model's :class:`Costs` with its measured
    latency (relative budgets are fractions of it); ``latency_fn`` predicts a
    policy's latency in ms on the target (the per-layer table) and is only
    called when the budget limits latency; ``measure_seconds`` returns the
    table's running total of seconds spent measuring new layer shapes, so that
    a trial's one-off measurements (``lut_measure_s``) are told apart from the
    per-trial cost of predicting. ``budget_baseline`` is what relative budget
    clauses are fractions of (default ``baseline``): the search passes the
    baseline with the faster of the latency table's and the study's time of the
    uncompressed model, so that ``latency<=0.5x`` compares a predicted speed
    ratio (or a stricter one), and a slow moment of either measurement never
    loosens the limit. ``fill``: move sampled proposals to the budget's edge
    (:meth:`candidate`, :mod:`autocompress.search.fill`). ``leader_check``: measure
    each candidate that would lead the search, judge the budget on that, and scale
    later predictions by how the measured ones ran (:mod:`autocompress.search.leader_check`).
    """

    def __init__(
        self,
        task: Task,
        inventory: LayerInventory,
        space: ResolvedSpace,
        budget: Budget,
        settings: FinetuneSettings,
        baseline: Costs,
        latency_fn: LatencyFn | None = None,
        mode: str = "constrained",
        strategy: str = "tpe",
        cost_fn: Callable[[CompressionPolicy, LayerInventory], Costs] | None = None,
        val_loader: DataLoader | None = None,
        budget_section: dict[str, Any] | None = None,
        measure_seconds: Callable[[], float] | None = None,
        budget_baseline: Costs | None = None,
        fill: bool = False,
        leader_check: LeaderCheck | None = None,
    ) -> None:
        if budget.needs_latency and latency_fn is None:
            raise ValueError("the budget limits latency, so Objective needs a latency_fn")
        self.task = task
        self.inventory = inventory
        self.space = space
        self.budget = budget
        self.settings = settings
        self.baseline = baseline
        self.budget_baseline = budget_baseline if budget_baseline is not None else baseline
        self.latency_fn = latency_fn
        self.mode = mode
        self.strategy = strategy
        self.cost_fn = cost_fn or (lambda p, inv: analytic_costs(p, inv, include_layers=False))
        self.val_loader = val_loader if val_loader is not None else val_subset(
            task, settings.val_samples)
        self.budget_section = budget_section or budget.to_dict(self.budget_baseline)
        self.measure_seconds = measure_seconds or (lambda: 0.0)
        self.fill = fill
        self.leader_check = leader_check
        # Parameter dicts evaluated as they are even when filling (the uniform warm start:
        # a planned point, already at the budget's edge, that the search must not move).
        self.planned: set[tuple[tuple[str, Any], ...]] = set()
        self._reach_at: tuple[float, bool] | None = None  # (scale, corner in reach at it)
        self._corner_met: bool | None = None  # the cheapest corner, measured: met the budget
        # Parameter dicts the search loop should evaluate next, as they are (a corner that
        # met the budget when timed: the one policy with a measurement for it).
        self.to_try: list[dict[str, Any]] = []
        self._fill_corner: tuple[tuple[float, int], dict[str, Any]] | None = None
        # params_key -> (feasible, constraints) the fill predicted, at (scale, latency_fn id)
        self._screened: dict[tuple[tuple[str, Any], ...], tuple[bool, dict[str, float]]] = {}
        self._screened_at: tuple[float, int] | None = None

    # ---- what the study optimises ------------------------------------------
    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better

    @property
    def worst_metric(self) -> float:
        """The value infeasible candidates get: 0.0 for accuracy-like metrics, else a huge one."""
        return 0.0 if self.higher_is_better else 1e12

    @property
    def cost_metric(self) -> str:
        """The cost the pareto mode trades off: latency when budgeted, else the first clause's."""
        return "latency" if self.budget.needs_latency else self.budget.metrics[0]

    @property
    def directions(self) -> list[str]:
        first = "maximize" if self.higher_is_better else "minimize"
        return [first] if self.mode == "constrained" else [first, "minimize"]

    def is_better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    # ---- stages --------------------------------------------------------------
    @property
    def scale(self) -> float:
        """What latency predictions are multiplied by: the in-loop checks' (1 without them)."""
        return self.leader_check.scale if self.leader_check is not None else 1.0

    def _predictions_at(self) -> tuple[float, int]:
        """What a prediction depends on besides the policy: the scale and the latency function
        (a Ray worker sets a new one). Memos of predictions are kept while it stays."""
        return self.scale, id(self.latency_fn)

    def predict(self, policy: CompressionPolicy) -> Costs:
        """Analytic costs, plus predicted latency when the budget needs it (no training)."""
        costs = self.cost_fn(policy, self.inventory)
        if self.budget.needs_latency:
            assert self.latency_fn is not None
            costs = costs.with_latency(self.latency_fn(policy) * self.scale)
        return costs

    def check(self, costs: Costs) -> tuple[bool, dict[str, float]]:
        """``(feasible, {metric: cost / limit - 1})`` (``<= 0`` = within budget)."""
        return self.budget.check(costs, self.budget_baseline)

    def feasible_params(self, params: dict[str, Any]) -> bool:
        """Whether the policy of a parameter dict meets the budget (prediction only)."""
        return self.screen(self.space.policy_from_params(params)).feasible

    def cheapest_corner(self) -> tuple[bool, CompressionPolicy, Costs, dict[str, float]]:
        """``(meets, policy, costs, violations)`` of the space's corner closest to the budget.

        The corners (:meth:`ResolvedSpace.corner_policies`), not only the smallest policy:
        on a latency target a low rank or 4-bit weights can cost time. The first corner
        that meets the budget is returned, else the one with the smallest worst violation.
        """
        return self._cheapest_corner()[1:]

    def _cheapest_corner(self) -> tuple[dict[str, Any], bool, CompressionPolicy, Costs,
                                        dict[str, float]]:
        """:meth:`cheapest_corner` with the corner's parameter dict first."""
        best: tuple[float, dict[str, Any], CompressionPolicy, Costs, dict[str, float]] | None = None
        for params in self.space.corner_params():
            policy = self.space.policy_from_params(params)
            costs = self.predict(policy)
            ok, violations = self.check(costs)
            if ok:
                return params, True, policy, costs, violations
            excess = max(violations.values(), default=0.0)
            if best is None or excess < best[0]:
                best = (excess, params, policy, costs, violations)
        assert best is not None  # the smallest policy is always a corner
        return best[1], False, best[2], best[3], best[4]

    def out_of_reach(self) -> bool:
        """Whether no corner of the space is predicted to meet the budget any more.

        Only the in-loop measurements change that during a run: their scale makes every
        later latency prediction larger, and then no candidate is measured again, so the
        scale stays. Checked once per scale (a run with checks off is never out of reach
        here: :func:`~autocompress.search.api.prepare_run` warned about it up front).
        Before it says so, the corner is measured once, and that settles it: the scale
        can rest on one noisy measurement (in stop 15 a single trial timed 1.18x its
        prediction ended digits-mlp ``latency<=0.35x`` runs at their first trial, where
        uniform's pick then met the budget at 0.31x). Its ratio joins the scale. When it
        met, the scale is capped where the corner is predicted to meet the budget: the
        median of a slow trial and a fast corner could otherwise still put every candidate
        over it, and the run screen out candidates until it gave up with nothing trained
        (seen on digits-mlp ``latency<=0.35x``: 400 skipped, no trial). Candidates near
        the corner are then trained, and judged on their own measurements, and the corner
        itself is queued (:attr:`to_try`): budget filling moves proposals toward the
        smallest policy, which on a latency target need not be the fastest corner.
        """
        if self.leader_check is None or self.leader_check.scale <= 1.0:
            return False
        return not self.corner_in_reach()

    def corner_in_reach(self) -> bool:
        """Whether the cheapest corner meets the budget: predicted at the current scale, else
        timed once (with in-loop checks on; without them, the prediction's answer).

        The timing settles it for the rest of the run. When the corner met, the scale is
        capped where the corner is predicted to meet the budget, below 1 when the latency
        table put it over before any measurement (a digits-mlp ``latency<=0.35x`` run's fresh
        table predicted its fastest corner over the budget, and the run screened out every
        candidate untimed, while uniform's and random's picks met it when measured), and
        the corner is queued (:attr:`to_try`). See :meth:`out_of_reach`.
        """
        if self._corner_met is not None:  # the corner was measured
            return self._corner_met
        scale = self.scale
        if self._reach_at is None or self._reach_at[0] != scale:
            params, meets, corner, costs, violations = self._cheapest_corner()
            if not meets and self.leader_check is not None and "latency" in violations:
                self._corner_met = self.leader_check.probe(
                    corner, costs, self.budget, self.budget_baseline)[0]
                if self._corner_met:
                    # The corner's unscaled prediction times the cap is its limit (a hair under).
                    self.leader_check.cap = scale / (1.0 + violations["latency"]) * (1 - 1e-9)
                    self.planned.add(params_key(params))
                    self.to_try.append(params)
                return self._corner_met
            self._reach_at = (scale, meets)
        return self._reach_at[1]

    def fill_corner(self) -> dict[str, Any]:
        """The far end of budget filling's line: :meth:`cheapest_corner`'s parameters.

        That is the space's most compressed point whenever it is predicted to meet the
        budget (the first corner), else the first corner that is, else the closest one. On
        a latency target the most compressed point can be slower than a pruned, dense
        corner (a low rank adds a matrix product): with it as the line's end, TPE's
        proposals at digits-distorted ``latency<=0.25x`` found no point under the budget
        once the in-loop scale rose (its trials 1-20 were all screened out). Recomputed when
        the scale changes.
        """
        key = self._predictions_at()
        if self._fill_corner is None or self._fill_corner[0] != key:
            self._fill_corner = (key, self._cheapest_corner()[0])
        return self._fill_corner[1]

    def candidate(self, params: dict[str, Any], planned: bool = False,
                  is_new: Callable[[CompressionPolicy], bool] | None = None,
                  rng: random.Random | None = None,
                  ) -> tuple[CompressionPolicy, dict[str, Any] | None]:
        """The policy a sampler's parameter dict is evaluated as, and how it was filled.

        With ``fill`` on, the proposal moved to the budget's edge (its
        :meth:`Filled.summary <autocompress.search.fill.Filled.summary>` second, with the
        seconds it took); an edge point ``is_new`` says was evaluated already is moved to
        a neighbour on the edge that was not (knobs tried in ``rng``'s order). Otherwise,
        for a ``planned`` point (or one in ``self.planned``), or when no point of its line
        meets the budget, the proposal as drawn and None.
        """
        if self.fill and not planned and params_key(params) not in self.planned:
            from autocompress.search.fill import fill_to_budget

            t0 = time.perf_counter()
            new_params = None
            if is_new is not None:
                def new_params(p: dict[str, Any]) -> bool:
                    return is_new(self.space.policy_from_params(p))
            filled = fill_to_budget(self.space, params, self._screen_params,
                                    is_new=new_params, rng=rng, corner=self.fill_corner())
            if filled is not None:
                info = {**filled.summary(), "fill_s": round(time.perf_counter() - t0, 6)}
                return self.space.policy_from_params(filled.params), info
        return self.space.policy_from_params(params), None

    def _screen_params(self, params: dict[str, Any]) -> tuple[bool, dict[str, float]]:
        # The fill and its walk screen the same points trial after trial (a small space
        # has few edge points, and their neighbours are tried again each time one is
        # taken): remember them. A prediction changes only with the measured scale (or a
        # new latency function, as a Ray worker sets): then the memo starts again.
        at = self._predictions_at()
        if self._screened_at != at or len(self._screened) >= SCREEN_MEMO_SIZE:
            self._screened, self._screened_at = {}, at
        key = params_key(params)
        hit = self._screened.get(key)
        if hit is None:
            s = self.screen(self.space.policy_from_params(params))
            hit = self._screened[key] = (s.feasible, dict(s.constraints))
        return hit[0], dict(hit[1])

    def screen(self, policy: CompressionPolicy) -> Screening:
        """Predict a candidate's costs and check the budget: nothing is applied or fine-tuned.

        A search can screen candidates before it creates a trial for them and
        hand the :class:`Screening` to :meth:`__call__`, which then does not
        predict again.
        """
        t0 = time.perf_counter()
        measured0 = self.measure_seconds()
        costs = self.predict(policy)
        feasible, constraints = self.check(costs)
        return Screening(costs=costs, feasible=feasible, constraints=constraints,
                         cost_s=time.perf_counter() - t0,
                         lut_measure_s=self.measure_seconds() - measured0)

    def __call__(
        self,
        policy: CompressionPolicy,
        report: Report | None = None,
        provenance: dict[str, Any] | None = None,
        screening: Screening | None = None,
    ) -> TrialOutcome:
        """Evaluate one candidate (see the module docstring); ``screening``: its :meth:`screen`."""
        t0 = time.perf_counter()
        screened_before = screening.cost_s if screening is not None else 0.0  # part of total_s
        if screening is None:
            screening = self.screen(policy)
        costs, feasible, constraints = screening.costs, screening.feasible, screening.constraints
        timings = {"apply_s": 0.0, "finetune_s": 0.0, "eval_s": 0.0, "cost_s": screening.cost_s,
                   "lut_measure_s": screening.lut_measure_s, "measure_s": 0.0}
        check: dict[str, Any] | None = None
        metric: float | None = None
        pruned = False
        intermediate: list[tuple[int, float]] = []
        if feasible:
            use_report = report if self.mode == "constrained" else None
            result = compress_and_score(
                self.task, policy, self.settings, self.inventory,
                val_loader=self.val_loader, report=use_report,
            )
            metric = float(result.metric)
            pruned = result.stopped_at is not None
            intermediate = list(result.reports or [])
            timings.update(apply_s=result.apply_s, finetune_s=result.finetune_s,
                           eval_s=result.eval_s)
            del result  # the fine-tuned model is not kept: the export rebuilds the best one
            if (self.leader_check is not None and not pruned
                    and self.leader_check.leads(metric)):
                t1 = time.perf_counter()
                # Judged on the measurement from here on: over the budget, it is not the pick.
                feasible, constraints, check = self.leader_check.check(
                    policy, costs, self.budget, self.budget_baseline, metric)
                timings["measure_s"] = time.perf_counter() - t1
        value = metric if metric is not None and feasible else self.worst_metric
        values = [value] if self.mode == "constrained" else [value, self._cost_value(costs)]
        timings["total_s"] = time.perf_counter() - t0 + screened_before
        full_policy = self._annotate(policy, costs, metric, provenance)
        attrs: dict[str, Any] = {
            "policy": full_policy.to_dict(),
            "feasible": bool(feasible),
            "violations": {k: float(v) for k, v in constraints.items()},
            **{k: int(getattr(costs, k)) for k in COST_KEYS},
            "predicted_latency_ms": costs.latency_ms,
            "metric": metric,
            **{k: round(float(v), 6) for k, v in timings.items()},
            "strategy": self.strategy,
        }
        if check is not None:
            attrs[LEADER_CHECK_ATTR] = check
        return TrialOutcome(
            policy=full_policy, costs=costs, feasible=feasible, constraints=constraints,
            metric=metric, values=values, pruned=pruned, intermediate=intermediate,
            user_attrs=attrs,
        )

    # ---- helpers ---------------------------------------------------------------
    def _cost_value(self, costs: Costs) -> float:
        v = costs.value(self.cost_metric)
        return float(v) if v is not None else float("inf")

    def _annotate(
        self,
        policy: CompressionPolicy,
        costs: Costs,
        metric: float | None,
        provenance: dict[str, Any] | None,
    ) -> CompressionPolicy:
        """The policy as exported: fingerprint, task, budget, predicted metrics, provenance."""
        metrics: dict[str, Any] = {k: getattr(costs, k) for k in COST_KEYS}
        if costs.latency_ms is not None:
            metrics["latency_ms"] = costs.latency_ms
        if metric is not None:
            metrics[self.task.metric_name] = metric
        from autocompress import __version__

        prov = {"backend": "optuna", "seed": self.settings.seed, "strategy": self.strategy,
                "autocompress": __version__, "torch": torch.__version__}
        prov.update(provenance or {})
        return policy.with_fingerprint(self.inventory, self.task.name).model_copy(
            update={"budget": self.budget_section, "metrics": metrics, "provenance": prov}
        )
