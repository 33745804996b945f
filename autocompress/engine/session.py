"""A search run's fixed parts: prepared before its first trial, finished after its last.

:func:`prepare_run` is the one setup every backend and ``autocompress worker`` uses (the
study, the baseline, the latency table, the :class:`~autocompress.engine.objective.Objective`
and its judge); :func:`finish_run` picks the best trial and exports the results folder.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import torch
import yaml
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from autocompress.cost import Budget, Costs, Target, analytic_costs, parse_budget, parse_target
from autocompress.cost.budget import format_cost
from autocompress.device import check_precision, resolve_device, teacher_on
from autocompress.device import describe as describe_device
from autocompress.engine.baselines import uniform_starts
from autocompress.engine.config import SearchConfig
from autocompress.engine.judge import PolicyTimer
from autocompress.engine.objective import Objective
from autocompress.engine.optuna_backend import (
    make_pruner,
    make_sampler,
    open_study,
    quiet_optuna,
)
from autocompress.engine.progress import slow_step
from autocompress.engine.storage import STUDY_FILE, redact_url, storage_for
from autocompress.evaluate import FinetuneSettings, evaluate, val_subset
from autocompress.inventory import LayerInventory, build_inventory
from autocompress.pareto import BUDGET_BASELINE_ATTR
from autocompress.policy import CompressionPolicy
from autocompress.space import ResolvedSpace, SearchSpace, default_space
from autocompress.tasks import Task, load_task

if TYPE_CHECKING:
    from autocompress.cost.lut import LatencyLUT

LOG = logging.getLogger("autocompress.engine")

EXIT_OK = 0


EXIT_NO_FEASIBLE = 3


LUT_FILE = "latency_lut.json"


LOOP_LUT_MEASURE_ATTR = "lut_measure_loop_s"  # study attribute: latency-table fills during the trial loop


Log = Callable[[str], None]


@dataclass
class SearchResult:
    """What a search run produced.

    ``exit_status``: 0 when some trial met the budget, 3 when none did (the
    CLI's exit code). ``summary`` is the export's summary (None without export).
    """

    best_policy: CompressionPolicy | None
    best_metric: float | None
    best_trial: int | None
    trials: pd.DataFrame
    out: Path
    exit_status: int
    study: optuna.Study
    config: SearchConfig
    summary: Any | None = None
    seconds: float = 0.0

    @property
    def feasible(self) -> bool:
        return self.exit_status == EXIT_OK


@dataclass
class PreparedRun:
    """Everything fixed for one search run before its first trial, whatever runs the trials.

    Built by :func:`prepare_run` for ``autocompress search`` (both backends) and
    ``autocompress worker``. ``study`` holds the contract's study attributes
    (``autocompress``, ``baseline``, ``inventory_sha256``); ``objective`` scores
    a policy; ``lut`` is the latency table (None when the budget does not limit
    latency); ``where`` names the storage in messages; ``created`` is True when
    this call created the study; ``reachable`` is False when every corner of the
    space (:meth:`ResolvedSpace.corner_policies`) is predicted over the budget
    (then every trial counts toward ``trials``: hunting for a candidate under
    the budget would be in vain).
    """

    config: SearchConfig
    task: Task
    inventory: LayerInventory
    space: ResolvedSpace
    budget: Budget
    target: Target
    study: optuna.Study
    created: bool
    objective: Objective
    lut: LatencyLUT | None
    where: str
    reachable: bool = True

    @property
    def out(self) -> Path:
        """The results folder (``config.out_dir``)."""
        return self.config.out_dir

    @property
    def baseline(self) -> Costs:
        """The uncompressed model's costs (latency as stored in the study)."""
        return self.objective.baseline


def prepare_run(
    cfg: SearchConfig,
    task: Task | None = None,
    storage: BaseStorage | str | None = None,
    log: Log | None = None,
    sampler_seed: int | None = None,
    progress: bool = False,
    warm_start: bool = True,
) -> PreparedRun:
    """Everything a run fixes before its first trial; the one setup every backend and worker uses.

    Checks budget, target and space (cheap, before any model is loaded), loads
    the task, writes ``config.resolved.yaml`` and ``env.json``, opens (or
    creates) the study, measures the baseline once per study, seeds and
    measures the latency table, builds the
    :class:`~autocompress.engine.objective.Objective` and warns when the budget
    looks out of reach. ``storage``: an opened storage (e.g.
    :func:`autocompress.engine.storage.open_storage` with a heartbeat), a URL,
    or None for ``cfg.storage`` / the run's journal file. ``sampler_seed``
    replaces ``cfg.seed`` for the sampler only (see
    :func:`autocompress.engine.workers.worker_seed`). ``progress`` shows a
    spinner on stderr during the slow steps. ``warm_start``: queue
    :func:`warm_starts` in a study this call creates (Ray Tune passes them
    as points to evaluate instead).

    >>> prep = prepare_run(SearchConfig.build(None, {"task": "digits",  # doctest: +SKIP
    ...                    "budget": "macs<=50%", "out": "results/digits"}))
    >>> prep.objective(prep.space.smallest_policy()).feasible  # doctest: +SKIP
    True
    """
    quiet_optuna()
    say: Log = log or LOG.warning
    # Cheap checks first: a bad budget, target, device or space fails before any model is loaded.
    # Ray trials that hold GPUs resolve the device where they run; this node may have none.
    on_trials = cfg.backend == "ray" and cfg.gpus_per_trial > 0
    device = resolve_device("auto" if on_trials else cfg.device)
    check_precision(cfg.precision, torch.device("cuda") if on_trials else device)
    budget = parse_budget(cfg.budget)
    target0 = parse_target(cfg.target)
    space = SearchSpace.load(cfg.space) if cfg.space else None
    if task is None:
        task = load_task(cfg.task, data_dir=cfg.data_dir, checkpoint=cfg.checkpoint)
    target = target0.with_batch(task.target_batch_size)
    inventory = build_inventory(task.model, task.example_input)
    # The learning rate is resolved here, so the study records the number that was used.
    lr = cfg.lr or task.lr
    cfg = cfg.model_copy(update={"task": task.name, "lr": lr})
    if space is None:
        # A task without a shipped space gets one derived from its layers, saved for editing.
        space = default_space(task.name, inventory, out=cfg.out_dir)
    resolved = space.resolve(inventory)
    # A derived space stays unnamed: a worker joining the study derives it again, wherever it runs.
    cfg = cfg.model_copy(update={"space": None if space.derived else space.source})
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)

    settings = FinetuneSettings(
        steps=cfg.finetune_steps, lr=lr, temperature=cfg.temperature, alpha=cfg.alpha,
        seed=cfg.seed, report_every=cfg.report_every, val_samples=cfg.val_samples,
        threads=cfg.threads, distill=cfg.distill, device=cfg.device, precision=cfg.precision,
    )
    from autocompress import __version__

    resolved_cfg = {
        **cfg.model_dump(), "version": __version__, "budget": budget.text,
        "target": target.name, "space_sha256": space.sha256, "space_derived": space.derived,
        "finetune": settings.to_dict(),
    }
    _write_run_files(out, resolved_cfg, target, device)

    if storage is None:
        storage = storage_for(out, cfg.storage)
        where = cfg.storage or str(out / STUDY_FILE)
    else:
        where = redact_url(storage) if isinstance(storage, str) else (cfg.storage or "the storage")
    study, created = open_study(
        storage, cfg.study_name, _directions(task, cfg.mode),
        make_sampler(cfg.strategy, cfg.mode,
                     cfg.seed if sampler_seed is None else sampler_seed, cfg.trials),
        make_pruner(cfg.pruner, cfg.mode, cfg.strategy, cfg.report_every),
        resolved_cfg, where,
    )
    val_loader = val_subset(task, settings.val_samples)
    frozen = None
    if cfg.lut is not None:  # away from the target: its table, never a timing here
        from autocompress.cost.lut import LatencyLUT

        frozen = LatencyLUT(cfg.lut, target, frozen=True)
        if frozen.foreign:
            say(f"the latency table {cfg.lut} was measured on another machine "
                f"({frozen.measured_on}): trials are judged on its predictions only, and "
                "`autocompress verify` on the target measures the results")
    # The teacher goes to the fine-tune's device once per run; the baseline is scored there.
    teacher = None if on_trials else teacher_on(task.model, device)
    baseline = _baseline(study, task, inventory, target, val_loader, say,
                         table=frozen, teacher=teacher, device=device)
    # Processes that created a shared study at the same moment may each have measured a
    # baseline; the one stored last is the study's, so every process judges the budget
    # against it (one process alone reads back its own value).
    stored = study.user_attrs.get("baseline") or {}
    if stored.get("latency_ms") is not None:
        baseline = baseline.with_latency(float(stored["latency_ms"]))

    latency_fn = None
    lut = None
    budget_baseline = baseline
    if budget.needs_latency:
        from autocompress.cost.lut import LatencyLUT

        lut = frozen or LatencyLUT(_seed_lut(out / LUT_FILE), target)
        latency_fn = lut_latency_fn(lut, inventory, task)
        if baseline.latency_ms and lut.forget_model_if_stale(
                inventory, task.example_input, float(baseline.latency_ms)):
            say("the cached whole-model latency disagrees with this study's baseline "
                "measurement by more than 30%; re-measuring it")
        with slow_step(progress, f"measuring the latency table on {target.name} ..."):
            latency_fn(CompressionPolicy(layers={}))  # measures the whole-model remainder once
        lut.save()
        # Predictions are speed ratios to the table's own time of the uncompressed model:
        # both times come from the table, so its error on the whole model cancels.
        # Measurements are judged against the uncompressed model timed alongside them.
        budget_baseline = baseline.with_latency(table_model_ms(lut, inventory, task))
        study.set_user_attr(BUDGET_BASELINE_ATTR, budget_baseline.latency_ms)

    objective = Objective(
        task, inventory, resolved, budget, settings, baseline, latency_fn=latency_fn,
        mode=cfg.mode, strategy=cfg.strategy, val_loader=val_loader,
        budget_section=budget.to_dict(budget_baseline, target.name),
        measure_seconds=(lambda: lut.measure_seconds) if lut is not None else None,
        budget_baseline=budget_baseline,
        # Only the sampled strategy is filled: baselines run as defined, and a Pareto search
        # wants candidates away from the budget's edge too.
        fill=cfg.fill_budget and cfg.strategy == "tpe" and cfg.mode == "constrained",
        measure=(PolicyTimer(task, inventory, target, baseline.latency_ms)
                 if cfg.measure and frozen is None else None),
        teacher=teacher,
    )
    if not created:  # a resumed run takes up the correction its timings taught
        objective.judge.correction.observe_trials(study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    with slow_step(progress, "checking the budget against the corners of the space ..."):
        reachable = _check_reach(objective, budget, say)
    if created and warm_start:
        for params, kind in warm_starts(cfg, objective, progress):
            study.enqueue_trial(params, user_attrs={"warm_start": kind})
    return PreparedRun(cfg, task, inventory, resolved, budget, target, study, created,
                       objective, lut, where, reachable)


def table_model_ms(lut: LatencyLUT, inventory: LayerInventory, task: Task) -> float:
    """The latency table's time of the uncompressed model (ms; measured once and cached)."""
    return float(lut.whole_model_fit(inventory, task.model, task.example_input)["model_ms"])


def lut_latency_fn(lut: LatencyLUT, inventory: LayerInventory, task: Task) -> Callable[[Any], float]:
    """``policy -> predicted ms`` from ``lut`` (new layer shapes are measured and saved)."""
    model, x = task.model, task.example_input

    def latency_fn(policy: Any) -> float:
        # No floor at the layers' sum: small layers timed alone carry the profiler's
        # per-kernel cost, so a compressed model can run faster than its layers' entries add
        # up to (the table's remainder is then negative).
        return float(lut.predict(policy, inventory, model, x))

    return latency_fn


def finish_run(
    prep: PreparedRun, t_start: float, *, lut_path: Path | None, progress: bool = False
) -> SearchResult:
    """The :class:`SearchResult` of a run whose trials are done (exported when ``cfg.export``).

    The best trial is the export's pick (:func:`autocompress.pareto.pick_best`:
    best metric among feasible COMPLETE trials, ties to the cheaper one), so the
    result and the results folder agree. On the target every trained candidate was timed
    before its fine-tune and judged on that, and the pick is timed once more
    (:func:`autocompress.export.verify.confirm_pick`, in the export when there is one), so
    a pick meets the budget on a timing that was not the one it was picked for.
    ``lut_path``: the latency table the export reads (None: none); ``t_start``:
    ``time.perf_counter()`` at the start.
    """
    from autocompress.pareto import pick_best

    cfg, study, out = prep.config, prep.study, prep.out
    summary = None
    if cfg.export:
        from autocompress.export import export_results

        with slow_step(progress, "exporting the best model and the report ..."):
            # Away from the target nothing is timed: the summary says its basis is predicted.
            summary = export_results(study, prep.task, out, target=prep.target,
                                     budget=prep.budget, lut_path=lut_path,
                                     measure=cfg.lut is None)
    elif prep.objective.judge.measures:
        from autocompress.export.verify import confirm_pick

        for note in confirm_pick(study, prep.task, prep.inventory, prep.target, prep.budget):
            LOG.warning(note)
    best = pick_best(study)  # after the export, which passes over a pick that missed when confirmed
    best_policy = None
    if best is not None:
        best_policy = CompressionPolicy.from_dict(best.user_attrs["policy"],
                                                  source=f"trial {best.number}")
    return SearchResult(
        best_policy=best_policy,
        best_metric=float(best.user_attrs["metric"]) if best is not None else None,
        best_trial=best.number if best is not None else None,
        trials=study.trials_dataframe(),
        out=out,
        exit_status=EXIT_OK if best is not None else EXIT_NO_FEASIBLE,
        study=study,
        config=cfg,
        summary=summary,
        seconds=time.perf_counter() - t_start,
    )


def _directions(task: Task, mode: str) -> list[str]:
    first = "maximize" if task.higher_is_better else "minimize"
    return [first] if mode == "constrained" else [first, "minimize"]


def _write_run_files(out: Path, resolved_cfg: dict[str, Any], target: Target,
                     device: torch.device | None = None) -> None:
    """``config.resolved.yaml`` and ``env.json`` (versions, CPU, threads, target, fine-tune device)."""
    from autocompress.cost import env_fingerprint

    (out / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_cfg, sort_keys=False))
    env = env_fingerprint(target)
    env.update({"optuna": optuna.__version__, "torch_threads": torch.get_num_threads(),
                "autocompress": resolved_cfg["version"],
                "finetune_device": describe_device(device or torch.device("cpu"))})
    (out / "env.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")


def _baseline(
    study: optuna.Study,
    task: Task,
    inventory: LayerInventory,
    target: Target,
    val_loader: Any,
    say: Log,
    table: LatencyLUT | None = None,
    teacher: torch.nn.Module | None = None,
    device: torch.device | None = None,
) -> Costs:
    """The uncompressed model's costs with its latency, measured once per study and stored.

    ``table``: a latency table profiled on the target, for a run away from it: its time of
    the uncompressed model is taken, not a timing on this machine. ``teacher``: the model
    on the fine-tune's ``device``, where its metric is scored (latency: ``task.model`` on the
    CPU target).
    """
    stored = study.user_attrs.get("baseline")
    costs = analytic_costs(None, inventory, include_layers=False)
    if stored is None:
        from autocompress.cost.timing import whole_model_ms

        latency = (table_model_ms(table, inventory, task) if table is not None
                   else whole_model_ms(task.model, task.example_input, target))
        stored = {
            "metric": evaluate(teacher if teacher is not None else task.model, task, val_loader,
                               device if teacher is not None else None),
            "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better,
            "latency_ms": float(latency),
            "macs": int(costs.macs), "params": int(costs.params),
            "size_bytes": int(costs.size_bytes), "bops": int(costs.bops),
            "target": target.name,
        }
        study.set_user_attr("baseline", stored)
        study.set_user_attr("inventory_sha256", inventory.sha256)
    elif study.user_attrs.get("inventory_sha256") not in (None, inventory.sha256):
        from autocompress.errors import ConfigError

        raise ConfigError(
            "the study was made for a different model (inventory fingerprint differs); "
            "use a new --out for this model"
        )
    return costs.with_latency(float(stored["latency_ms"]))


def _check_reach(objective: Objective, budget: Budget, say: Log) -> bool:
    """Whether a corner of the space passes screening (warns when none does).

    On the target, screening lets a prediction within the judge's tolerance through, so
    a table a few percent pessimistic about the space's corner still has it timed.
    """
    ok, _, costs, violations = objective.reachable_corner()
    if ok:
        return True
    worst = max(violations, key=violations.__getitem__)
    have = costs.value(worst)
    limit = budget.limits(objective.budget_baseline)[worst]
    model = objective.budget_baseline.value(worst)
    # The ratio the space reaches tells a person how far to loosen a relative budget.
    reach = (f" ({float(have) / model:.2f}x of the uncompressed model's {format_cost(model, worst)})"
             if have is not None and model else "")
    say(f"warning: budget {budget.text!r} looks out of reach: the cheapest corner of the space "
        f"predicts {worst} {format_cost(float(have or 0), worst)}{reach} against a limit of "
        f"{format_cost(limit, worst)}; the search runs, and exits 3 if no trial meets it "
        "(loosen the budget or widen the space)")
    return False


WARM_STARTED = ("tpe", "nsga2")
# Study attribute: the uniform baseline's first candidate, as its timings placed it.
UNIFORM_START_ATTR = "uniform_start"


# Uniform starts timed at most before the warm start is taken as it is (MiniLM: ~15 s each).
MAX_START_TIMINGS = 4
# Timings of each point a warm start's placement tries; it is judged on the slowest.
PLACEMENT_TIMINGS = 2


def warm_starts(cfg: SearchConfig, objective: Objective,
                progress: bool = False) -> list[tuple[dict[str, Any], str]]:
    """The first trials of a sampled search (``tpe``, ``nsga2``), each with its kind.

    A sampler's first trials are random draws (TPE's startup trials, NSGA-II's
    first population), many of them far from the budget's edge. ``uniform``: the uniform
    policy a person would try first (:func:`uniform_start`), also the uniform baseline's
    first candidate, so the search's best is never below it. ``refined``
    (``warm_start: refined``, the default): that policy with the budget's room left given
    back to the layers it hurts most (:func:`~autocompress.engine.refine.rank_moves`; one
    score without a fine-tune per layer whose move fits, for at most
    :data:`~autocompress.engine.refine.MAX_SCORED_MOVES` layers). On the target it spends the
    room the start's timing left (:meth:`~autocompress.engine.objective.Objective.screen_from_timing`)
    and is timed, and packed again under the line through both timings until it meets
    (:func:`~autocompress.engine.refine.place_timed`). Empty
    for other strategies, ``warm_start: none``, or a budget no uniform policy meets.
    """
    if cfg.warm_start == "none" or cfg.strategy not in WARM_STARTED:
        return []
    first = uniform_start(objective, progress)
    if first is None:
        return []
    out = [(first, "uniform")]
    if cfg.warm_start == "refined":
        from autocompress.engine.refine import layer_moves, pack, place_timed, rank_moves

        def score(params: dict[str, Any]) -> float:
            return objective.untrained_metric(objective.space.policy_from_params(params))

        on_target = objective.judge.measures
        with slow_step(progress, "refining the warm start: scoring each layer given back ..."):
            # On the target it spends the room the start's timing left, and timings decide
            # where it lands; elsewhere predictions place it, a spread under the limit.
            moves = layer_moves(objective.space, first)
            ranked = rank_moves(first, moves, objective.screen_from_timing(first) if on_target
                                else objective.screen_placed, score, objective.higher_is_better)
        refined: tuple[dict[str, Any], list[str]] | None = None
        if ranked and on_target:
            with slow_step(progress, "timing the refined warm start on the target ..."):
                refined = place_timed(
                    first, moves, ranked,
                    lambda missed: objective.screen_from_timing(first, missed),
                    lambda params: _timed_meets(objective, params))
        elif ranked:
            refined = pack(first, moves, ranked, objective.screen_placed)
        if refined is not None:
            out.append((refined[0], "refined"))
    return out


def uniform_start(objective: Objective, progress: bool = False) -> dict[str, Any] | None:
    """The uniform policy a person would try first: quantised to 8 bits where that helps,
    then pruned as little as meets the budget, found by bisection on predicted costs
    (:func:`~autocompress.engine.baselines.uniform_starts`); None when no uniform policy
    meets it.

    On the target it is timed (:data:`PLACEMENT_TIMINGS` times, judged on the slowest) and
    pruned a uniform level further while the timing misses (at most
    :data:`MAX_START_TIMINGS` points), so a start that misses is not what a search or the
    uniform baseline begins with: one that misses is never fine-tuned.
    """
    starts = uniform_starts(objective.space, objective.feasible_params)
    first = next(starts, None)
    if first is not None and objective.judge.measures:
        with slow_step(progress, "timing the uniform warm start on the target ..."):
            tried = itertools.islice(itertools.chain([first], starts), MAX_START_TIMINGS)
            for first in tried:  # the last one tried stands if none meets
                if _timed_meets(objective, first):
                    break
    return first


def _timed_meets(objective: Objective, params: dict[str, Any]) -> bool:
    """Whether ``params``'s policy meets the budget timed on the target, read
    :data:`PLACEMENT_TIMINGS` times and judged on the slowest; the trial that evaluates the
    policy is judged on that timing (:meth:`Judge.remember`), not timed again."""
    judge = objective.judge
    assert judge.measure is not None, "a placement is timed only on the target"
    policy = objective.space.policy_from_params(params)
    # The slower of two readings: a walk that stops at the first point one timing calls
    # feasible keeps the point that timed luckiest (MiniLM's refined start read 0.88x its
    # prediction, then 0.65x the model when its export re-measured it, over a 0.6x budget).
    measured_ms, baseline_ms = max((judge.measure(policy) for _ in range(PLACEMENT_TIMINGS)),
                                   key=lambda r: r[0] / r[1])
    judge.remember(policy, measured_ms, baseline_ms)
    raw = objective.predict_raw(policy)
    feasible = judge.judge_measured(judge.corrected(raw), measured_ms, baseline_ms).feasible
    LOG.info("warm start placement: predicted ratio %.4f (uncorrected), timed %.4f: %s",
             judge.predicted_ratio(raw) or float("nan"),
             measured_ms / baseline_ms, "meets" if feasible else "misses")
    return feasible


def _seed_lut(path: Path) -> Path:
    """Start the run's latency table from the shared cache (same machine, same targets)."""
    from autocompress.cost.lut_store import default_lut_path

    shared = default_lut_path()
    if not path.exists() and shared.is_file():
        with contextlib.suppress(OSError):
            shutil.copyfile(shared, path)
    return path


def _share_lut(lut: LatencyLUT) -> None:
    """Merge the run's latency table into the shared cache so later runs reuse it."""
    from autocompress.cost.lut_store import default_lut_path

    try:
        lut.save(default_lut_path())
    except (OSError, ValueError) as exc:  # a cache is an optimisation; never fail a run for it
        LOG.info("could not update the shared latency table: %s", exc)
