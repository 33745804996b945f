"""THE trial: drawn parameters -> fill -> screen -> time on the target -> fine-tune -> record.

Every backend runs candidates through :func:`run_trial`: the in-process search loop
(:func:`autocompress.engine.optuna_backend.run_trials`), ``autocompress worker``
(:func:`autocompress.engine.workers.optuna_objective`) and Ray Tune trials
(:func:`autocompress.engine.ray_backend.ray_trainable`). A backend adapts only how a
trial is asked for, how intermediate metrics are reported, and how the outcome is told.

Proposals (:class:`Proposals`) are filled to the budget's edge (``fill``), and an edge
point some trial of the run already took walks to one none did (:mod:`autocompress.engine.fill`,
:mod:`autocompress.engine.taken`). When the walk finds none, the trial is told the earlier
trial's outcome (a :class:`Repeat`) instead of training the policy again; after
``MAX_REPEATS_IN_A_ROW`` repeats in a row filling stops for the rest of this process's
run, since the edge is exhausted. Each time the taken policies are read, the trials
timed on the target (in any process) teach the judge's correction
(:class:`~autocompress.engine.judge.Correction`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.trial import FrozenTrial, TrialState

from autocompress.engine.objective import Objective, Screening, TrialOutcome
from autocompress.engine.record import TrialRecord
from autocompress.evaluate import Report
from autocompress.policy import CompressionPolicy

LOG = logging.getLogger(__name__)
# Filled proposals landing on judged policies in a row before filling stops for the run (a
# small space can hold fewer edge points than trials: the MLP's has a handful).
MAX_REPEATS_IN_A_ROW = 5


class Taken(Protocol):
    """The policies a run's trials took (trained or timed), however the backend shares them."""

    def refresh(self) -> list[FrozenTrial]:
        """Read what other trials took; returns the finished trials newly read."""

    def is_new(self, policy: dict[str, Any]) -> bool: ...

    def earlier(self, policy: dict[str, Any]) -> FrozenTrial | None: ...

    def claim(self, policy: dict[str, Any], trial: Any = None) -> None:
        """Take ``policy`` for ``trial`` (the backend's own trial object) before it is judged."""

    def add(self, trial: FrozenTrial) -> None: ...


@dataclass
class Repeat:
    """A proposal filled onto a policy ``earlier`` judged: tell that trial's outcome."""

    earlier: FrozenTrial
    fill: dict[str, Any] | None

    @property
    def pruned(self) -> bool:
        return self.earlier.state == TrialState.PRUNED or self.earlier.values is None

    def record(self) -> dict[str, Any]:
        """The repeat's attributes: the earlier trial's record, never counted nor picked."""
        attrs = self.earlier.user_attrs
        record = TrialRecord(
            policy=attrs.get("policy"), feasible=False,
            violations=dict(attrs.get("violations") or {}),
            macs=int(attrs.get("macs") or 0), bops=int(attrs.get("bops") or 0),
            params=int(attrs.get("params") or 0), size_bytes=int(attrs.get("size_bytes") or 0),
            strategy=str(attrs.get("strategy")), metric=attrs.get("metric"),
            pruned=self.earlier.state == TrialState.PRUNED,
            predicted_latency_ms=attrs.get("predicted_latency_ms"),
            fill=self.fill, cost_s=float((self.fill or {}).get("fill_s", 0.0)),
            repeat_of=self.earlier.number,
        )
        return record.to_attrs()


@dataclass
class Proposals:
    """What a trial trains for the parameters its sampler drew: filled, walked, claimed.

    ``taken``: the run's taken policies (:class:`~autocompress.engine.taken.TakenPolicies`
    on an Optuna storage, or the Ray run's shared claims), read again before each fill.
    """

    objective: Objective
    taken: Taken
    repeats_in_a_row: int = 0
    #: Seconds the latency table spent timing new layer shapes while the last proposal was
    #: filled: recorded on its trial (``lut_measure_fill_s``), so the one-off measurements are told
    #: apart from the controller's time even in a killed run.
    lut_measure_fill_s: float = 0.0

    def policy_for(self, name: str, drawn: dict[str, Any], planned: bool = False,
                   trial: Any = None,
                   ) -> tuple[CompressionPolicy, dict[str, Any] | None, FrozenTrial | None]:
        """``(policy, fill, earlier)``: ``earlier`` set means tell the trial a repeat of it.

        ``name``: the trial's name (seeds the walk); ``planned``: evaluate as drawn;
        ``trial``: the backend's trial object the policy is claimed for.
        """
        objective = self.objective
        self.objective.judge.correction.observe_trials(self.taken.refresh())
        taken = self.taken
        measured0 = objective.measure_seconds()
        policy, fill = objective.candidate(
            drawn, planned=planned, is_new=lambda p: taken.is_new(p.to_dict()),
            rng=random.Random(f"{objective.settings.seed}:{name}"))
        self.lut_measure_fill_s = objective.measure_seconds() - measured0
        earlier = taken.earlier(policy.to_dict()) if fill is not None else None
        if earlier is not None and self.repeats_in_a_row < MAX_REPEATS_IN_A_ROW:
            self.repeats_in_a_row += 1
            return policy, fill, earlier
        if earlier is not None:  # filling keeps repeating itself: explore as drawn
            LOG.info("%d filled proposals in a row landed on judged policies; "
                     "proposals are evaluated as drawn from here", self.repeats_in_a_row)
            objective.fill = False
            policy, fill = objective.space.policy_from_params(drawn), None
        self.repeats_in_a_row = 0
        taken.claim(policy.to_dict(), trial)
        return policy, fill, None

    def finished(self, trial: FrozenTrial) -> None:
        """A trial this process finished: its policy is taken without reading the study again."""
        self.taken.add(trial)


def run_trial(
    proposals: Proposals,
    name: str,
    drawn: dict[str, Any],
    *,
    planned: bool = False,
    report: Report | None = None,
    provenance: dict[str, Any] | None = None,
    screening: Screening | None = None,
    policy: CompressionPolicy | None = None,
    trial: Any = None,
    judged: Callable[[TrialRecord, float], None] | None = None,
) -> TrialOutcome | Repeat:
    """One trial of any backend: the policy for ``drawn``, judged and, if it meets, trained.

    ``name``: the trial's name (its number, or Ray's trial id); ``report(step, metric) ->
    stop``: intermediate metrics for a pruner or scheduler; ``screening``: the candidate's
    screening when the backend screened it before creating the trial (``policy`` then is
    the policy it screened, used as it is); ``trial``: the backend's trial object;
    ``judged``: called with the record as judged and its Pareto cost, before the fine-tune.
    """
    fill = None
    if policy is None:
        policy, fill, earlier = proposals.policy_for(name, drawn, planned=planned, trial=trial)
        if earlier is not None:
            return Repeat(earlier, fill)
    prov = {**(provenance or {})}
    if fill is not None:
        prov["fill"] = fill
    outcome = proposals.objective(policy, report=report, provenance=prov, screening=screening,
                                  key=name, judged=judged)
    outcome.record.fill = fill
    outcome.record.lut_measure_fill_s = proposals.lut_measure_fill_s
    return outcome

