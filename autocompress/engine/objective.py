"""The trial's work, free of any backend: policy -> costs -> judged -> fine-tune -> score.

For each candidate policy:

1. predict its costs (analytic MACs/BOPs/params/size, plus the latency table's
   prediction, corrected from measurements, when the budget limits latency);
2. screen it (:meth:`autocompress.engine.judge.Judge.screen`): a candidate predicted
   over the budget is recorded with its costs and constraint values and gets the worst
   metric (0.0 for accuracy-like metrics) WITHOUT being built or fine-tuned;
3. on the target, build it and time it next to the uncompressed model
   (:meth:`~autocompress.engine.judge.Judge.time`): that measurement judges the budget,
   and a candidate that misses is recorded, not fine-tuned;
4. otherwise fine-tune it with KD from the uncompressed model
   (:func:`autocompress.evaluate.compress_and_score`), passing intermediate
   metrics to ``report`` (a pruner may stop it), and score it on the fixed
   validation subset.

Every backend turns the :class:`TrialOutcome` into trial values, ``set_constraint``
calls and the :class:`~autocompress.engine.record.TrialRecord` attributes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from autocompress.cost import Budget, Costs, analytic_costs
from autocompress.device import resolve_device, teacher_on
from autocompress.engine.baselines import params_key
from autocompress.engine.judge import LATENCY, Judge, Judgment, MeasureFn
from autocompress.engine.record import COST_KEYS, TrialRecord
from autocompress.evaluate import FinetuneSettings, Report, compress_and_score, val_subset
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy
from autocompress.space import ResolvedSpace
from autocompress.tasks.base import Task

LatencyFn = Callable[[CompressionPolicy], float]
SCREEN_MEMO_SIZE = 100_000  # fill predictions kept per run (a few hundred bytes each)


@dataclass(frozen=True)
class Screening:
    """A candidate's predicted costs and verdict (:meth:`Objective.screen`).

    ``costs`` carry the corrected latency prediction; ``cost_s``: seconds the
    prediction took, ``lut_measure_s`` of which the latency table spent measuring layer
    shapes it had not seen.
    """

    costs: Costs
    judgment: Judgment
    cost_s: float
    lut_measure_s: float
    predicted_ratio: float | None = None  # the table's uncorrected speed ratio
    correction: float = 1.0  # the factor the latency prediction was corrected by

    @property
    def feasible(self) -> bool:
        return self.judgment.feasible

    @property
    def constraints(self) -> dict[str, float]:
        return self.judgment.constraints


@dataclass
class TrialOutcome:
    """Everything one judged candidate produced.

    ``values`` are the objective values (constrained: ``[metric]``; pareto:
    ``[metric, cost]``); ``constraints`` one value per budget clause
    (``<= 0`` = met); ``record`` the trial's attributes.
    """

    policy: CompressionPolicy
    costs: Costs
    feasible: bool
    constraints: dict[str, float]
    metric: float | None
    values: list[float]
    record: TrialRecord
    pruned: bool = False
    intermediate: list[tuple[int, float]] = field(default_factory=list)

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The record as user attributes (one dict, one storage write)."""
        return self.record.to_attrs()


class Objective:
    """Judges and scores candidate policies for one run; holds what stays fixed across trials.

    ``baseline`` is the uncompressed model's :class:`Costs` with the study's measured
    latency; ``latency_fn`` predicts a policy's latency in ms on the target (the per-layer
    table) and is only called when the budget limits latency; ``measure_seconds`` returns
    the table's running total of seconds spent measuring new layer shapes, so that a
    trial's one-off measurements (``lut_measure_s``) are told apart from the per-trial
    cost of predicting. ``budget_baseline``: the uncompressed model's costs with the
    latency table's own time of it (default ``baseline``), what predicted speed ratios
    are relative to. ``measure``: times a policy's model next to the uncompressed model
    on the target (None: away from the target, predictions decide; see
    :mod:`autocompress.engine.judge`). ``fill``: move sampled proposals to the budget's
    edge (:meth:`candidate`, :mod:`autocompress.engine.fill`). ``teacher``: the uncompressed
    model on the fine-tune's device (default: made on first use, :attr:`teacher`).
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
        measure: MeasureFn | None = None,
        teacher: nn.Module | None = None,
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
        self.judge = Judge(budget, self.budget_baseline, measure)
        self.latency_fn = latency_fn
        self.mode = mode
        self.strategy = strategy
        self.cost_fn = cost_fn or (lambda p, inv: analytic_costs(p, inv, include_layers=False))
        self.val_loader = val_loader if val_loader is not None else val_subset(
            task, settings.val_samples)
        self.budget_section = budget_section or budget.to_dict(self.budget_baseline)
        self.measure_seconds = measure_seconds or (lambda: 0.0)
        self.fill = fill
        # Parameter dicts evaluated as they are even when filling (the warm starts: planned
        # points, placed at the budget's edge, that the search must not move).
        self.planned: dict[tuple[tuple[str, Any], ...], str] = {}  # -> its warm start's kind
        self._fill_corner: tuple[tuple[float, int], dict[str, Any]] | None = None
        # params_key -> (feasible, constraints) the fill predicted, at (correction, latency_fn)
        self._screened: dict[tuple[tuple[str, Any], ...], tuple[bool, dict[str, float]]] = {}
        self._screened_at: tuple[float, int] | None = None
        self._teacher: nn.Module | None = teacher

    @property
    def teacher(self) -> nn.Module:
        """The uncompressed model on the fine-tune's device, made once per process.

        On the CPU it is ``task.model`` itself; on a GPU one copy moved there, which every
        trial distils from and copies its student from (``task.model`` stays on the CPU,
        where latency is timed).
        """
        if self._teacher is None:
            self._teacher = teacher_on(self.task.model, resolve_device(self.settings.device))
        return self._teacher

    def __getstate__(self) -> dict[str, Any]:
        # A pickled objective (a Ray trial's) makes its teacher again on its own device.
        state = self.__dict__.copy()
        state["_teacher"] = None
        return state

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
    def _predictions_at(self) -> tuple[float, int]:
        """What a prediction depends on besides the policy: the correction and the latency
        function (a Ray worker sets a new one). Memos of predictions are kept while it stays."""
        return self.judge.correction.factor, id(self.latency_fn)

    def predict_raw(self, policy: CompressionPolicy) -> Costs:
        """Analytic costs, plus the table's latency prediction (uncorrected) when budgeted."""
        costs = self.cost_fn(policy, self.inventory)
        if self.budget.needs_latency:
            assert self.latency_fn is not None
            costs = costs.with_latency(self.latency_fn(policy))
        return costs

    def predict(self, policy: CompressionPolicy) -> Costs:
        """Analytic costs, plus the corrected latency prediction when budgeted (no training)."""
        return self.judge.corrected(self.predict_raw(policy))

    def check(self, costs: Costs) -> tuple[bool, dict[str, float]]:
        """``(passes screening, constraints)`` of predicted ``costs`` (see :class:`Judge`)."""
        verdict = self.judge.screen(costs)
        return verdict.feasible, verdict.constraints

    def feasible_params(self, params: dict[str, Any]) -> bool:
        """Whether a parameter dict's policy is predicted to meet the budget by the guard."""
        return self._screen_params(params)[0]

    def reachable_corner(self) -> tuple[bool, CompressionPolicy, Costs, dict[str, float]]:
        """``(meets, policy, costs, constraints)`` of the space's corner closest to the budget.

        The corners (:meth:`ResolvedSpace.corner_policies`), not only the smallest policy:
        on a latency target a low rank or 4-bit weights can cost time. The first corner
        predicted to pass screening is returned, else the one with the smallest worst
        constraint.
        """
        return self._reachable_corner()[1:]

    def _reachable_corner(self) -> tuple[dict[str, Any], bool, CompressionPolicy, Costs,
                                        dict[str, float]]:
        """:meth:`reachable_corner` with the corner's parameter dict first."""
        best: tuple[float, dict[str, Any], CompressionPolicy, Costs, dict[str, float]] | None = None
        for params in self.space.corner_params():
            policy = self.space.policy_from_params(params)
            costs = self.predict(policy)
            ok, constraints = self.check(costs)
            if ok:
                return params, True, policy, costs, constraints
            excess = max(constraints.values(), default=0.0)
            if best is None or excess < best[0]:
                best = (excess, params, policy, costs, constraints)
        assert best is not None  # the smallest policy is always a corner
        return best[1], False, best[2], best[3], best[4]

    def fill_corner(self) -> dict[str, Any]:
        """The far end of budget filling's line: :meth:`reachable_corner`'s parameters.

        That is the space's most compressed point whenever it passes screening (the first
        corner), else the first corner that does, else the closest one. On a latency
        target the most compressed point can be slower than a pruned, dense corner (a low
        rank adds a matrix product), and a line ending there finds no point under the
        budget. Recomputed when the correction changes.
        """
        key = self._predictions_at()
        if self._fill_corner is None or self._fill_corner[0] != key:
            self._fill_corner = (key, self._reachable_corner()[0])
        return self._fill_corner[1]

    def candidate(self, params: dict[str, Any], planned: bool = False,
                  is_new: Callable[[CompressionPolicy], bool] | None = None,
                  rng: random.Random | None = None,
                  ) -> tuple[CompressionPolicy, dict[str, Any] | None]:
        """The policy a sampler's parameter dict is evaluated as, and how it was filled.

        With ``fill`` on, the proposal moved to the budget's edge, the predicted latency
        :data:`~autocompress.engine.judge.MEASURED_GUARD` under its limit (its
        :meth:`Filled.summary <autocompress.engine.fill.Filled.summary>` second, with the
        seconds it took); an edge point ``is_new`` says was evaluated already is moved to
        a neighbour on the edge that was not (knobs tried in ``rng``'s order). Otherwise,
        for a ``planned`` point (or one in ``self.planned``), or when no point of its line
        meets the budget, the proposal as drawn and None.
        """
        if self.fill and not planned and params_key(params) not in self.planned:
            from autocompress.engine.fill import fill_to_budget

            t0 = time.perf_counter()
            new_params = None
            if is_new is not None:
                def new_params(p: dict[str, Any]) -> bool:
                    return is_new(self.space.policy_from_params(p))
            # The constraints already carry the guard; the fill aims one spread of the
            # corrected predictions under it, so most proposals meet the budget when timed.
            margin = self.judge.correction.spread
            filled = fill_to_budget(self.space, params, self.screen_fill,
                                    is_new=new_params, rng=rng, corner=self.fill_corner(),
                                    margins={LATENCY: margin} if margin else {})
            if filled is not None:
                info = {**filled.summary(), "margin": round(margin, 4),
                        "fill_s": round(time.perf_counter() - t0, 6)}
                return self.space.policy_from_params(filled.params), info
        return self.space.policy_from_params(params), None

    def _screen_params(self, params: dict[str, Any]) -> tuple[bool, dict[str, float]]:
        # The fill and its walk screen the same points trial after trial (a small space
        # has few edge points, and their neighbours are tried again each time one is
        # taken): remember them. A prediction changes only with the correction (or a
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

    def screen_fill(self, params: dict[str, Any]) -> tuple[bool, dict[str, float]]:
        """What the fill calls a point within budget: every constraint met by prediction
        (screening's tolerance is for timing a candidate, not for placing one)."""
        _, constraints = self._screen_params(params)
        return all(v <= 0 for v in constraints.values()), constraints

    def screen_placed(self, params: dict[str, Any]) -> tuple[bool, dict[str, float]]:
        """:meth:`screen_fill` with the latency clause one spread of the corrected predictions
        under its limit, where the fill aims: so a point placed by prediction mostly meets
        the budget when timed (the refined warm start)."""
        ok, constraints = self.screen_fill(params)
        margin = self.judge.correction.spread
        return ok and constraints.get(LATENCY, -1.0) <= -margin, constraints

    def screen_from_timing(
        self, anchor: dict[str, Any], missed: dict[str, Any] | None = None
    ) -> Callable[[dict[str, Any]], tuple[bool, dict[str, float]]]:
        """:meth:`screen_fill` for points near ``anchor``, a point timed on the target: each
        latency prediction scaled by the anchor's timing over the anchor's prediction. With
        ``missed``, a point further out that was timed too, the measured ratio is read off
        the line through both timings instead.

        The refined warm start gives layers back from a timed uniform start, one level each.
        The table's error on the start is mostly its neighbours' error too, so the slack the
        refinement spends is the one the timing showed. (Scaled by the search's correction
        instead, a start predicted 3% over the limit and timed 9% under it left no room:
        the correction weighs one timing a third, and every move was screened out.) When
        its packing times over the limit (:func:`~autocompress.engine.refine.place_timed`),
        the line through the start and that miss says what the moves cost: a ratio scale
        read off the miss alone put MiniLM's start itself at the limit, and left no room.
        Without a timing of ``anchor`` this is :meth:`screen_fill`.
        """
        timed, predicted = self._timed_and_predicted(anchor)
        if timed is None or not predicted:
            return self.screen_fill

        # A line through the anchor's timing: through the origin (a scale) alone, through
        # the missed point's timing when there is one.
        slope = timed / predicted
        if missed is not None:
            far, far_predicted = self._timed_and_predicted(missed)
            if far is not None and far_predicted is not None and far_predicted > predicted:
                slope = (far - timed) / (far_predicted - predicted)

        def measured(ratio: float) -> float:
            return timed + slope * (ratio - predicted)

        reference_ms = self.judge.reference.latency_ms
        assert reference_ms

        def screen(params: dict[str, Any]) -> tuple[bool, dict[str, float]]:
            raw = self.predict_raw(self.space.policy_from_params(params))
            ratio = self.judge.predicted_ratio(raw)
            assert ratio is not None
            _, constraints = self.check(raw.with_latency(measured(ratio) * reference_ms))
            return all(v <= 0 for v in constraints.values()), constraints

        return screen

    def _timed_and_predicted(self, params: dict[str, Any]) -> tuple[float | None, float | None]:
        """A point's remembered measured ratio and its uncorrected predicted ratio."""
        policy = self.space.policy_from_params(params)
        return (self.judge.remembered_ratio(policy),
                self.judge.predicted_ratio(self.predict_raw(policy)))

    def screen(self, policy: CompressionPolicy) -> Screening:
        """Predict a candidate's costs and screen it: nothing is built or fine-tuned.

        A search can screen candidates before it creates a trial for them and
        hand the :class:`Screening` to :meth:`__call__`, which then does not
        predict again.
        """
        t0 = time.perf_counter()
        measured0 = self.measure_seconds()
        raw = self.predict_raw(policy)
        costs = self.judge.corrected(raw)
        return Screening(costs=costs, judgment=self.judge.screen(costs),
                         cost_s=time.perf_counter() - t0,
                         lut_measure_s=self.measure_seconds() - measured0,
                         predicted_ratio=self.judge.predicted_ratio(raw),
                         correction=self.judge.correction.factor)

    def untrained_metric(self, policy: CompressionPolicy) -> float:
        """``policy``'s metric with no fine-tune: applied, quantised and calibrated as a trial
        builds it, scored on the trial's validation batches. The greedy sensitivities and the
        refined warm start rank knobs by it."""
        return compress_and_score(self.task, policy, replace(self.settings, steps=0),
                                  self.inventory, self.teacher, self.val_loader).metric

    def __call__(
        self,
        policy: CompressionPolicy,
        report: Report | None = None,
        provenance: dict[str, Any] | None = None,
        screening: Screening | None = None,
        key: str | None = None,
        judged: Callable[[TrialRecord, float], None] | None = None,
    ) -> TrialOutcome:
        """Judge and score one candidate (see the module docstring).

        ``screening``: its :meth:`screen`, when the caller screened it already; ``key``:
        the trial's name in the judge's correction (default: the provenance's trial);
        ``judged``: called with the record as judged and the Pareto cost, before the
        fine-tune (a Ray trial reports them, since a trial its scheduler stops never returns).
        """
        t0 = time.perf_counter()
        screened_before = screening.cost_s if screening is not None else 0.0  # part of total_s
        if screening is None:
            screening = self.screen(policy)
        costs, verdict = screening.costs, screening.judgment
        timings = {"apply_s": 0.0, "finetune_s": 0.0, "eval_s": 0.0, "cost_s": screening.cost_s,
                   "lut_measure_s": screening.lut_measure_s, "measure_s": 0.0}
        metric: float | None = None
        pruned = False
        intermediate: list[tuple[int, float]] = []
        if verdict.feasible and self.judge.measures:
            t1 = time.perf_counter()
            name = key if key is not None else str((provenance or {}).get("trial", id(policy)))
            verdict = self.judge.time(policy, costs, name, screening.predicted_ratio)
            timings["measure_s"] = time.perf_counter() - t1
        if judged is not None:
            judged(self.record(self._annotate(policy, costs, None, provenance), costs, verdict,
                               screening, cost_s=screening.cost_s,
                               lut_measure_s=screening.lut_measure_s,
                               measure_s=timings["measure_s"]),
                   self._cost_value(costs))
        if verdict.feasible:
            use_report = report if self.mode == "constrained" else None
            result = compress_and_score(
                self.task, policy, self.settings, self.inventory, teacher=self.teacher,
                val_loader=self.val_loader, report=use_report,
            )
            metric = float(result.metric)
            pruned = result.stopped_at is not None
            intermediate = list(result.reports or [])
            timings.update(apply_s=result.apply_s, finetune_s=result.finetune_s,
                           eval_s=result.eval_s)
            del result  # the fine-tuned model is not kept: the export rebuilds the best one
        feasible = verdict.feasible
        value = metric if metric is not None and feasible else self.worst_metric
        values = [value] if self.mode == "constrained" else [value, self._cost_value(costs)]
        timings["total_s"] = time.perf_counter() - t0 + screened_before
        full_policy = self._annotate(policy, costs, metric, provenance)
        record = self.record(full_policy, costs, verdict, screening, metric=metric,
                             pruned=pruned, **timings)
        return TrialOutcome(
            policy=full_policy, costs=costs, feasible=feasible,
            constraints=dict(verdict.constraints), metric=metric, values=values, pruned=pruned,
            intermediate=intermediate, record=record,
        )

    def record(self, policy: CompressionPolicy, costs: Costs, verdict: Judgment,
               screening: Screening, **fields: Any) -> TrialRecord:
        """The :class:`TrialRecord` of a judged candidate (``fields``: metric, timings...)."""
        return TrialRecord(
            policy=policy.to_dict(), feasible=bool(verdict.feasible),
            violations={k: float(v) for k, v in verdict.constraints.items()},
            macs=int(costs.macs), bops=int(costs.bops), params=int(costs.params),
            size_bytes=int(costs.size_bytes), strategy=self.strategy,
            predicted_latency_ms=costs.latency_ms,
            predicted_ratio=screening.predicted_ratio,
            correction=screening.correction if costs.latency_ms is not None else None,
            latency_basis=verdict.basis, measured_latency_ms=verdict.measured_ms,
            measured_baseline_ms=verdict.baseline_ms, measured_ratio=verdict.measured_ratio,
            **fields,
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
