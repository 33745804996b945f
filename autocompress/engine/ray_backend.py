"""``--backend ray``: the same objective as Ray Tune trials (OptunaSearch + ASHA).

Each candidate is one Ray Tune trial running
:class:`~autocompress.engine.objective.Objective`, the objective the Optuna
backend runs, on a local Ray runtime (``ray.init`` with this machine's CPUs)
or an existing cluster (``ray_address="auto"`` or ``"host:port"``):

- candidates come from :class:`ray.tune.search.optuna.OptunaSearch` over the
  search space's own Optuna distributions (names ``<fqn>/<knob>``), with the
  strategy's sampler; budget violations are passed to it as constraints
  (Optuna 5 ``set_constraint``), so it learns where the budget lies;
- an infeasible candidate is recorded with its costs and constraints and is
  never fine-tuned (its value is the worst metric, as in the Optuna backend);
- in constrained mode :class:`~ray.tune.schedulers.ASHAScheduler` stops
  fine-tunes early at rungs of ``report_every`` fine-tune steps (the metric
  is reported with ``ray.tune.report`` every ``report_every`` steps);
- the Ray experiment lives in ``<out>/ray/<study_name>``; running the same
  command after an interruption resumes it with ``Tuner.restore``;
- at the end every Ray trial is written into the run's Optuna study
  (``<out>/study.log``) with the contract's user attributes, constraints and
  intermediate values (an ASHA-stopped trial is PRUNED), and the results
  folder is written by the same :func:`~autocompress.export.export_results`.
  ``autocompress report`` therefore works on a Ray run as on any other.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune import Callback

from autocompress.engine.baselines import params_key
from autocompress.engine.progress import BestSoFar, TrialBar
from autocompress.errors import ConfigError

if TYPE_CHECKING:
    from autocompress.cost import Target
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.objective import Objective
    from autocompress.engine.session import PreparedRun, SearchResult
    from autocompress.tasks import Task

LOG = logging.getLogger("autocompress.engine")
RAY_DIR = "ray"
# Keys of the results a trial reports to Tune.
METRIC = "objective"  # the first objective value: the task metric (worst value when infeasible)
COST = "cost"  # pareto mode: the second objective (latency or the budget's first metric)
STEP = "finetune_step"  # ASHA's time attribute: fine-tune steps done
FINAL = "ac_final"  # 1 on the trial's last report (the objective returned), 0 before
ATTRS = "ac_attrs"  # JSON: the contract's trial user attributes
CONSTRAINTS = "ac_constraints"  # JSON: {budget metric: violation} (<= 0 = met)
VALUES = "ac_values"  # JSON: the objective values


def _tune_mode(objective: Objective) -> str:
    return "max" if objective.higher_is_better else "min"


# ---------------------------------------------------------------- inside a Ray trial
@dataclass
class TrialKit:
    """What every Ray trial needs, shipped once through Ray's object store.

    The latency table is re-read from ``lut_path`` in each trial process, so
    layer shapes measured by earlier trials (and saved) are not measured again.
    """

    objective: Objective
    study_name: str
    lut_path: str | None = None
    target: Target | None = None
    lut: Any = None  # the driver's table, for nodes that do not see lut_path
    claims: Any = None  # a TakenPoliciesActor actor: taken policies and the timings' correction
    frozen: bool = False  # lut_path is a table profiled on the target (search --lut)

    def objective_here(self) -> tuple[Objective, Any]:
        """The objective with this process's view of the latency table (and that table).

        On the driver's machine the table file is re-read (what earlier trials
        measured is reused, and this trial's measurements are saved for later
        ones). On another node of a cluster, where that path does not exist, the
        driver's table shipped with the kit is used in memory only (no stray
        folders on worker nodes).
        """
        if self.lut_path is None or self.target is None:
            return self.objective, None
        from autocompress.cost.lut import LatencyLUT
        from autocompress.engine.session import lut_latency_fn

        if Path(self.lut_path).is_file():
            lut = LatencyLUT(self.lut_path, self.target, frozen=self.frozen)
        else:
            lut = self.lut
            if lut is not None:
                lut.path = None
        if lut is None:
            return self.objective, None
        self.objective.latency_fn = lut_latency_fn(lut, self.objective.inventory,
                                                   self.objective.task)
        self.objective.measure_seconds = lambda: lut.measure_seconds
        return self.objective, lut


class TakenPoliciesActor:
    """The policies this run's trials have taken, and the timings' correction ratios, kept by
    one Ray actor all trials ask.

    Each Ray trial runs in its own process and sees no other trial's policy, so filling
    alone would train the same edge point again and again (a small space has few). With
    this, the fill's walk (:func:`~autocompress.engine.fill.fill_to_budget`) moves a
    proposal whose edge point another trial took to one no trial has, and concurrent
    trials cannot take the same one: asking is taking (:meth:`claim` answers whether the
    policy was still free and then holds it). The measured-over-predicted ratios of the
    trials timed on the target are pooled here too, so every trial screens and fills with
    the run's correction (:class:`~autocompress.engine.judge.Correction`).

    >>> claims = TakenPoliciesActor(["a"])
    >>> claims.claim("a"), claims.claim("b"), claims.claim("b")
    (False, True, False)
    >>> claims.share_ratios({"1": 1.2}) == {"1": 1.2}
    True
    """

    def __init__(self, taken: list[str], ratios: dict[str, float] | None = None) -> None:
        self.taken = set(taken)
        self.ratios: dict[str, float] = dict(ratios or {})

    def claim(self, key: str) -> bool:
        """Whether ``key`` was free; it is taken from now on."""
        if key in self.taken:
            return False
        self.taken.add(key)
        return True

    def share_ratios(self, ratios: dict[str, float]) -> dict[str, float]:
        """Add a trial's correction ratios; returns every trial's."""
        self.ratios.update(ratios)
        return dict(self.ratios)


class RayTakenPolicies:
    """:class:`~autocompress.engine.trial.Taken` over a :class:`TakenPoliciesActor` actor.

    Ray trials are not told an earlier outcome as a repeat (``earlier`` is always None):
    when nothing is left to walk to, the policy is trained again.
    """

    def __init__(self, claims: Any, correction: Any) -> None:
        self.claims, self.correction = claims, correction

    def refresh(self) -> list[FrozenTrial]:
        import ray

        self.correction.ratios.update(
            ray.get(self.claims.share_ratios.remote(dict(self.correction.ratios))))
        return []

    def is_new(self, policy: dict[str, Any]) -> bool:
        import ray

        from autocompress.engine.taken import policy_digest

        return bool(ray.get(self.claims.claim.remote(policy_digest(policy))))

    def earlier(self, policy: dict[str, Any]) -> FrozenTrial | None:
        return None

    def claim(self, policy: dict[str, Any], trial: Any = None) -> None:
        from autocompress.engine.taken import policy_digest

        self.claims.claim.remote(policy_digest(policy))  # a point evaluated as it is is taken too

    def add(self, trial: FrozenTrial) -> None:
        self.share()

    def share(self) -> None:
        """Give the run this trial's correction ratios (its own timing among them)."""
        self.claims.share_ratios.remote(dict(self.correction.ratios))


def start_taken_actor(study: optuna.Study) -> Any:
    """A :class:`TakenPoliciesActor` actor holding the policies the study has judged already."""
    import ray

    from autocompress.engine.judge import Correction
    from autocompress.engine.record import DONE
    from autocompress.engine.taken import policy_digest, trained

    done = study.get_trials(deepcopy=False, states=DONE)
    taken = [policy_digest(t.user_attrs["policy"]) for t in done if trained(t)]
    correction = Correction()
    correction.observe_trials(done)
    return ray.remote(num_cpus=0)(TakenPoliciesActor).remote(taken, correction.ratios)


def ray_trainable(config: dict[str, Any], kit: TrialKit) -> None:
    """One Ray Tune trial: the candidate in ``config`` through :func:`run_trial`.

    Reports ``METRIC`` at every ``report_every`` fine-tune steps (ASHA's rungs), each
    with the trial's record as judged before the fine-tune, and once more, with
    ``FINAL=1`` and the full record, when done.
    """
    import torch
    from ray import tune
    from ray.tune.utils import flatten_dict

    from autocompress.engine.optuna_backend import worker_id
    from autocompress.engine.trial import Proposals, Repeat, run_trial

    # Ray gives each trial its CPUs; the fine-tune uses exactly those (one by default).
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - outside a Ray worker (a direct call in a test)
        pass
    objective, lut = kit.objective_here()
    names = objective.space.params
    params = {k: v for k, v in flatten_dict(dict(config), delimiter="/").items() if k in names}
    try:
        trial_id = str(tune.get_context().get_trial_id())
    except Exception:  # noqa: BLE001
        trial_id = "direct"
    taken = RayTakenPolicies(kit.claims, objective.judge.correction)
    proposals = Proposals(objective, taken)
    pareto = objective.mode != "constrained"
    common: dict[str, Any] = {}
    start = objective.planned.get(params_key(params))
    planned = start is not None
    # What the Optuna backends write on a trial besides its record: the process that ran it,
    # and which warm start it is (the points run_ray plans).
    marks = {"worker": worker_id(), **({"warm_start": start} if planned else {})}

    def judged(record: Any, cost: float) -> None:
        record.extra.update(marks)
        attrs = record.to_attrs()
        common.update({ATTRS: json.dumps(attrs), CONSTRAINTS: json.dumps(attrs["violations"])})
        if pareto:  # the objective's own cost value (size_bytes for a size budget, ...)
            common[COST] = float(cost)

    def report(step: int, metric: float) -> bool:
        tune.report({METRIC: float(metric), STEP: int(step), FINAL: 0, **common})
        return False  # ASHA decides outside: a stopped trial's process simply ends

    prov = {"backend": "ray", "study": kit.study_name, "ray_trial": trial_id}
    result = run_trial(proposals, trial_id, params, planned=planned, report=report,
                       provenance=prov, judged=judged)
    assert not isinstance(result, Repeat)  # RayTakenPolicies knows no earlier outcomes
    result.record.extra.update(marks)
    taken.share()
    if lut is not None:
        lut.save()  # layer shapes this trial measured serve the next trials
    attrs = result.user_attrs
    final = {
        METRIC: float(result.values[0]),
        STEP: int(objective.settings.steps) if result.feasible else 0,
        FINAL: 1,
        ATTRS: json.dumps(attrs),
        CONSTRAINTS: json.dumps({k: float(v) for k, v in result.constraints.items()}),
        VALUES: json.dumps([float(v) for v in result.values]),
    }
    if pareto:
        final[COST] = float(result.values[1])
    tune.report(final)


# ---------------------------------------------------------------- the searcher
def constrained_optuna_search(**kwargs: Any) -> Any:
    """:class:`OptunaSearch` that passes budget violations on as Optuna constraints.

    It also tells Optuna a trial ASHA stopped is PRUNED (Ray's OptunaSearch
    would record its last intermediate metric as a finished value).
    """
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result and trial_id not in self._completed_trials:
                for key, value in json.loads(result.get(CONSTRAINTS) or "{}").items():
                    ot_trial.set_constraint(key, float(value))
                if not error and not result.get(FINAL):
                    assert self._ot_study is not None
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
            super().on_trial_complete(trial_id, result=result, error=error)

        def add_history(self, trials: list[FrozenTrial]) -> int:
            """Tell the sampler about finished trials of earlier runs (values, constraints)."""
            assert self._ot_study is not None
            names = set(self._space) if isinstance(self._space, dict) else None
            added = 0
            for t in trials:
                if names is None or set(t.params) == names:
                    self._ot_study.add_trial(t)
                    added += 1
            return added

    return ConstrainedOptunaSearch(**kwargs)


# ---------------------------------------------------------------- Ray results -> Optuna study
def trial_from_result(result: Any, prep: PreparedRun) -> FrozenTrial | None:
    """One Ray :class:`~ray.tune.Result` as an Optuna trial with the contract's attributes.

    Finished: COMPLETE (or PRUNED when the objective itself stopped); stopped
    by ASHA: PRUNED with its intermediate values and pre-fine-tune
    attributes; errored: FAIL with the error. None for a trial that never
    reported and did not error (it never started).
    """
    from ray.tune.utils import flatten_dict

    space = prep.space
    params = {k: v for k, v in flatten_dict(dict(result.config or {}), delimiter="/").items()
              if k in space.params}
    # Snap floats to their distribution's grid: Ray/Optuna arithmetic leaves 0.35000000000000003.
    params = {k: _snap(space.params[k].distribution, v) for k, v in params.items()}
    df = result.metrics_dataframe
    rows: list[dict[str, Any]] = [] if df is None or df.empty else df.to_dict("records")
    last = rows[-1] if rows else dict(result.metrics or {})
    ray_id = str(last.get("trial_id") or Path(str(result.path)).name)
    intermediate = {int(r[STEP]): float(r[METRIC]) for r in rows
                    if not r.get(FINAL) and r.get(STEP) is not None and r.get(METRIC) is not None}
    final = next((r for r in rows if r.get(FINAL)), None)
    system = {"ray_trial_id": ray_id}
    values = None
    if final is not None:
        attrs = json.loads(final[ATTRS])
        constraints = json.loads(final[CONSTRAINTS])
        state = TrialState.PRUNED if attrs.get("pruned") else TrialState.COMPLETE
        if state == TrialState.COMPLETE:
            values = json.loads(final[VALUES])
    elif result.error is not None:
        attrs = json.loads(last[ATTRS]) if last.get(ATTRS) else {}
        attrs["error"] = f"{type(result.error).__name__}: {result.error}"[:500]
        constraints = json.loads(last[CONSTRAINTS]) if last.get(CONSTRAINTS) else {}
        state = TrialState.FAIL
    elif rows and last.get(ATTRS):
        # Stopped by ASHA at a rung: its metric is the last one measured (as for a trial
        # Optuna's pruner stops), its costs are those computed before the fine-tune.
        attrs = json.loads(last[ATTRS])
        attrs.update(metric=float(last[METRIC]), pruned=True, stopped_by="asha",
                     stopped_at_step=int(last[STEP]))
        constraints = json.loads(last[CONSTRAINTS])
        state = TrialState.PRUNED
    else:
        return None
    attrs["backend"] = "ray"
    attrs["ray_trial_id"] = ray_id
    if last.get("time_total_s") is not None:
        attrs.setdefault("total_s", round(float(last["time_total_s"]), 6))
    trial = optuna.trial.create_trial(
        state=state, values=values, params=params,
        distributions={k: space.params[k].distribution for k in params},
        user_attrs=attrs, system_attrs=system, intermediate_values=intermediate or None,
        constraints={k: float(v) for k, v in constraints.items()} or None,
    )
    if last.get("timestamp") is not None and last.get("time_total_s") is not None:
        end = datetime.fromtimestamp(float(last["timestamp"]))
        trial.datetime_complete = end
        trial.datetime_start = end - timedelta(seconds=float(last["time_total_s"]))
    return trial


def record_results(results: Any, prep: PreparedRun) -> int:
    """Add the Ray trials not yet in the study to it, in the order they started.

    Idempotent (a trial is known by its Ray trial id), so a resumed run adds
    only what is new. Returns how many trials were added.
    """
    study = prep.study
    known = {t.system_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    new = [t for t in (trial_from_result(r, prep) for r in results) if t is not None]
    new = [t for t in new if t.system_attrs["ray_trial_id"] not in known]
    new.sort(key=lambda t: t.datetime_start or datetime.max)
    number = len(study.trials)
    for i, t in enumerate(new):
        prov = t.user_attrs.get("policy", {}).get("provenance")
        if isinstance(prov, dict):  # the trial number exists only now
            prov["trial"] = number + i
        study.add_trial(t)
    return len(new)


def _snap(distribution: Any, value: Any) -> Any:
    step = getattr(distribution, "step", None)
    if step is None or not isinstance(value, float):
        return value
    low = distribution.low
    return round(low + round((value - low) / step) * step, 10)


# ---------------------------------------------------------------- progress
class RaySearchBar(Callback):
    """A Tune callback drawing the search progress bar: trials done, best feasible metric.

    The same line ``autocompress search`` shows with the Optuna backend
    (:class:`~autocompress.engine.progress.TrialBar`: stderr, a line per trial in a log;
    nothing when ``enabled`` is False).
    """

    def __init__(self, total: int, done: int, metric_name: str, higher_is_better: bool,
                 enabled: bool) -> None:
        self.done = done
        self.metric_name = metric_name
        self.stopped = self.over = 0
        self.best = BestSoFar(higher_is_better)
        self.bar = TrialBar("search (ray)", total, done, enabled)

    def setup(self, *args: Any, **info: Any) -> None:
        self.bar.start(self.info())

    def info(self) -> str:
        tail = f" ({self.stopped} stopped by ASHA, {self.over} over budget)"
        return (self.best.text(self.metric_name) or "no feasible trial yet") + tail

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        result = trial.last_result or {}
        attrs = json.loads(result.get(ATTRS) or "{}")
        if not result.get(FINAL):
            self.stopped += 1
        elif not attrs.get("feasible", True):
            self.over += 1
        elif attrs.get("metric") is not None and not attrs.get("pruned"):
            self.best.offer(float(attrs["metric"]), attrs)
        self.bar.update(self.done, self.info())

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.bar.stop()


# ---------------------------------------------------------------- the run
def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray runtime (this machine's CPUs) or connect to ``address``.

    Returns True when this call started or connected Ray (so the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                              configure_logging=False)
    if address and address != "auto" and not address.startswith(("ray://", "http")):
        # Ray retries an unreachable GCS for minutes; a plain TCP check answers in seconds.
        import socket

        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or address, int(port or 6379)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"no Ray head answers at {address!r} ({exc}); start one with `ray start --head "
                "--port=6379` and give --ray-address HOST:6379, or --ray-address auto on a node "
                "of a running cluster"
            ) from None
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot start or reach Ray at {address or 'a new local runtime'!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; give --ray-address "
            "auto (the cluster this node belongs to) or host:port of a running `ray start --head`"
        ) from None
    return True


def trial_resources(cpus: float, gpus: float = 0.0) -> dict[str, float]:
    """Ray's resources for one trial: its CPUs, and its GPUs when any (a fraction shares one).

    Ray then shows a trial only its own GPU(s), so ``--device cuda`` there is ``cuda:0``.

    >>> trial_resources(1), trial_resources(2, 0.5)
    ({'cpu': 1}, {'cpu': 2, 'gpu': 0.5})
    """
    return {"cpu": cpus, "gpu": gpus} if gpus > 0 else {"cpu": cpus}


def run_ray(
    cfg: SearchConfig,
    task: Task | None = None,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: float = 1,
    max_concurrent: int | None = None,
    points_to_evaluate: list[dict[str, Any]] | None = None,
    reduction_factor: float = 2,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Run (or resume) the search ``cfg`` as Ray Tune trials; the result of ``ac.search``.

    ``ray_address``: None = a local runtime with ``num_cpus`` (default: all of
    this machine's), ``"auto"`` or ``"host:port"`` = an existing cluster.
    ``cpus_per_trial``: CPUs each trial holds (its torch threads);
    ``max_concurrent``: trials at once (default: as the CPUs allow);
    ``points_to_evaluate``: parameter dicts tried first (e.g. a known good policy);
    ``reduction_factor``: ASHA's (keep the best 1/rf at each rung).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from autocompress.engine.optuna_backend import make_sampler, n_finished
    from autocompress.engine.session import finish_run, prepare_run, warm_starts

    t_start = time.perf_counter()
    say = log or LOG.warning
    # Tune's console tables say nothing the progress line and the results folder do not.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if cfg.strategy in ("uniform", "greedy"):
        raise ConfigError(
            f"strategy {cfg.strategy!r} is a baseline that plans its candidates one after the "
            "other; run it with --backend optuna, or use tpe, nsga2 or random with --backend ray"
        )
    if cpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial must be > 0, got {cpus_per_trial}")
    if cfg.gpus_per_trial > 0 and cfg.device == "cpu":
        raise ConfigError(
            f"gpus_per_trial={cfg.gpus_per_trial} reserves GPUs that --device cpu leaves idle; "
            "give --device cuda (or auto) with it, or --gpus-per-trial 0")
    prep = prepare_run(cfg, task, log=say, warm_start=False)
    cfg, study, objective = prep.config, prep.study, prep.objective
    starts = warm_starts(cfg, objective, progress) if prep.created else []
    if starts:  # OptunaSearch's own study is in memory: the points go to Tune
        points_to_evaluate = [*(p for p, _ in starts), *(points_to_evaluate or [])]
        for params, kind in starts:  # evaluated as they are, never filled
            objective.planned[params_key(params)] = kind
    out = prep.out
    stored = dict(study.user_attrs.get("autocompress") or {})
    if prep.created or "backend" not in stored:  # the export's provenance reads it
        study.set_user_attr("autocompress", {**stored, "backend": "ray"})
    exp_root = (out / RAY_DIR).resolve()
    owns_ray = False
    try:
        remaining = cfg.trials - n_finished(study)
        if remaining > 0:
            owns_ray = init_ray(ray_address, num_cpus)
            kit = TrialKit(objective, study.study_name,
                           _table_path(prep),
                           prep.target, prep.lut,
                           claims=start_taken_actor(study),
                           frozen=prep.lut is not None and prep.lut.frozen)
            trainable = tune.with_resources(
                tune.with_parameters(ray_trainable, kit=kit), trial_resources(
                    cpus_per_trial, cfg.gpus_per_trial))
            # Resume the last experiment of this run when Ray can; its trials keep their ids,
            # so record_results adds only what the study lacks.
            last = _last_experiment(exp_root)
            if last is not None and tune.Tuner.can_restore(str(last)):
                say(f"resuming the Ray experiment {last}")
                tuner = tune.Tuner.restore(str(last), trainable=trainable,
                                           resume_unfinished=True, resume_errored=True)
                record_results(tuner.fit(), prep)
                remaining = cfg.trials - n_finished(study)
            if remaining > 0:
                name = _next_experiment_name(exp_root, study.study_name)
                metric: Any = METRIC
                mode: Any = _tune_mode(objective)
                if cfg.mode != "constrained":
                    metric, mode = [METRIC, COST], [mode, "min"]
                searcher = constrained_optuna_search(
                    space=dict(prep.space.distributions), metric=metric, mode=mode,
                    sampler=make_sampler(cfg.strategy, cfg.mode, cfg.seed, cfg.trials),
                    points_to_evaluate=points_to_evaluate or None,
                )
                # Trials this run already holds (an earlier Ray experiment or Optuna backend
                # run into the same folder) teach the sampler before it proposes anything.
                searcher.add_history(study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
                scheduler: Any = FIFOScheduler()
                if (cfg.mode == "constrained" and cfg.pruner != "none" and cfg.report_every > 0
                        and cfg.finetune_steps > cfg.report_every):
                    scheduler = ASHAScheduler(
                        time_attr=STEP, metric=METRIC, mode=mode, max_t=cfg.finetune_steps,
                        grace_period=cfg.report_every, reduction_factor=reduction_factor,
                    )
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                        max_concurrent_trials=max_concurrent,
                        # One process per concurrent slot, not per trial: torch imports and
                        # the task's transfer are paid once per slot.
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=name, storage_path=str(exp_root), verbose=0,
                        failure_config=tune.FailureConfig(max_failures=0),
                        callbacks=[RaySearchBar(
                            cfg.trials, n_finished(study), prep.task.metric_name,
                            objective.higher_is_better, progress)],
                    ),
                )
                say(f"Ray Tune: {remaining} trials in {exp_root / name}")
                record_results(tuner.fit(), prep)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()

    table = _table_path(prep)
    return finish_run(prep, t_start, lut_path=Path(table) if table else None)


def _table_path(prep: PreparedRun) -> str | None:
    """The latency table trials read: the run's own, or the one profiled on the target."""
    from autocompress.engine.session import LUT_FILE

    if prep.lut is None:
        return None
    path = prep.lut.path if prep.lut.frozen else prep.out / LUT_FILE
    return str(Path(str(path)).resolve())


def _experiments(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def _last_experiment(root: Path) -> Path | None:
    exps = _experiments(root)
    return exps[-1] if exps else None


def _next_experiment_name(root: Path, base: str) -> str:
    taken = {p.name for p in _experiments(root)}
    if base not in taken:
        return base
    k = 2
    while f"{base}-{k}" in taken:
        k += 1
    return f"{base}-{k}"
