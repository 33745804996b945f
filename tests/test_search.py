"""The search through its Python API, on real Optuna journal files (in-process, fast settings)."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autocompress.cost import LatencyLUT, analytic_costs, parse_target
from autocompress.engine import SearchConfig, search
from autocompress.engine.judge import MEASURED_GUARD
from autocompress.engine.session import prepare_run, table_model_ms
from autocompress.errors import ConfigError
from autocompress.inventory import build_inventory
from autocompress.policy import CompressionPolicy
from autocompress.space import SearchSpace

CONTRACT_CONFIG = ("version", "task", "space", "budget", "target", "mode", "strategy", "seed",
                   "finetune_steps", "trials", "data_dir", "checkpoint")
CONTRACT_BASELINE = ("metric", "metric_name", "higher_is_better", "latency_ms", "macs", "params",
                     "size_bytes", "bops")
CONTRACT_TRIAL = ("policy", "feasible", "violations", "macs", "bops", "params", "size_bytes",
                  "predicted_latency_ms", "metric", "apply_s", "finetune_s", "eval_s", "cost_s",
                  "lut_measure_s", "total_s", "strategy")


def fast(digits_task, out: Path, **kw):
    """A search small enough for the default test run (torch target: no ONNX export)."""
    settings = dict(budget="macs<=60%", target="torch-1t", trials=4, finetune_steps=10,
                    out=out, export=False, report_every=5, val_samples=200)
    settings.update(kw)
    return search(digits_task, **settings)


def load(out: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    return optuna.load_study(study_name="autocompress", storage=storage)


def test_trials_carry_the_contract_attributes(digits_task, tmp_path):
    out = tmp_path / "run"
    result = fast(digits_task, out, strategy="random", trials=6)
    study = load(out)
    cfg = study.user_attrs["autocompress"]
    assert all(k in cfg for k in CONTRACT_CONFIG)
    assert cfg["space"] == "embedded:digits" and cfg["target"] == "torch-cpu-1t-b64"
    assert all(k in study.user_attrs["baseline"] for k in CONTRACT_BASELINE)
    assert study.user_attrs["baseline"]["latency_ms"] > 0
    inv = build_inventory(digits_task.model, digits_task.example_input)
    assert study.user_attrs["inventory_sha256"] == inv.sha256

    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len([t for t in trials if t.user_attrs["feasible"]]) == 6  # skipped ones not counted
    assert len(result.trials) == len(study.trials)
    for t in trials:
        assert all(k in t.user_attrs for k in CONTRACT_TRIAL), t.number
        a = t.user_attrs
        policy = CompressionPolicy.from_dict(a["policy"])
        policy.validate_against(inv)
        assert policy.model == {"inventory_sha256": inv.sha256, "task": "digits"}
        costs = analytic_costs(policy, inv)
        assert (a["macs"], a["params"], a["size_bytes"]) == (
            costs.macs, costs.params, costs.size_bytes)
        assert set(t.constraints) == {"macs"}
        assert a["feasible"] == (t.constraints["macs"] <= 0) == (a["macs"] <= 0.6 * inv.total_macs)
        assert a["predicted_latency_ms"] is None  # the budget does not limit latency
        if a["feasible"]:
            assert a["metric"] is not None and a["finetune_s"] > 0
            assert t.value == pytest.approx(a["metric"])
            assert list(t.intermediate_values) == [5]  # one report at step 5 of 10
        else:  # infeasible candidates are never applied nor fine-tuned
            assert a["metric"] is None and a["finetune_s"] == 0 and a["apply_s"] == 0
            assert t.value == 0.0 and not t.intermediate_values
    assert (out / "config.resolved.yaml").is_file()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["budget"] == "macs<=60%" and resolved["finetune"]["steps"] == 10
    assert "isa_flags" in json.loads((out / "env.json").read_text())
    feasible = [t for t in trials if t.user_attrs["feasible"]]
    assert feasible and result.exit_status == 0  # six trials were counted: all met macs<=60%
    best_metric = max(t.user_attrs["metric"] for t in feasible)
    assert result.best_metric == best_metric  # ties go to the cheaper trial
    assert study.trials[result.best_trial].user_attrs["metric"] == best_metric
    assert result.best_policy is not None and result.best_policy.layers


def test_impossible_budget_exits_3_without_finetuning(digits_task, tmp_path):
    said: list[str] = []
    result = fast(digits_task, tmp_path / "run", budget="macs<=0.1%", trials=3, log=said.append)
    assert result.exit_status == 3 and result.best_policy is None
    warning = next(s for s in said if "looks out of reach" in s)
    # It names the ratio the space reaches, which is how far a relative budget must loosen.
    reach = re.search(r"predicts macs [\d.e+]+ \((\d\.\d+)x of the uncompressed model's", warning)
    assert reach is not None and 0.001 < float(reach[1]) < 1, warning
    study = load(tmp_path / "run")
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.value == 0.0
        assert t.user_attrs["feasible"] is False and t.user_attrs["finetune_s"] == 0
        assert t.constraints["macs"] > 0


def test_candidates_over_the_budget_are_recorded_but_not_counted(digits_task, tmp_path):
    """``trials`` counts evaluated candidates: one the cost model puts over the budget is told
    to the sampler (it learns the budget's edge) but costs no fine-tune and no trial."""
    out = tmp_path / "run"
    result = fast(digits_task, out, strategy="random", budget="macs<=20%", trials=3)
    study = load(out)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    evaluated = [t for t in done if t.user_attrs["feasible"]]
    skipped = [t for t in done if not t.user_attrs["feasible"]]
    assert len(evaluated) == 3 and skipped  # random sampling lands over 20% of the MACs often
    assert all(t.user_attrs["finetune_s"] == 0 and t.constraints["macs"] > 0 for t in skipped)
    assert all(t.user_attrs["finetune_s"] > 0 for t in evaluated)
    assert result.exit_status == 0
    n = len(study.trials)
    fast(digits_task, out, strategy="random", budget="macs<=20%", trials=3)  # done: no new trial
    assert len(load(out).trials) == n


def test_trials_is_the_total_and_a_rerun_resumes(digits_task, tmp_path):
    out = tmp_path / "run"
    fast(digits_task, out, trials=3)
    first = [(t.number, t.params, t.values) for t in load(out).trials]
    result = fast(digits_task, out, trials=5)
    study = load(out)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len([t for t in done if t.user_attrs["feasible"]]) == 5  # skipped ones do not count
    assert [(t.number, t.params, t.values) for t in study.trials[:3]] == first
    assert len(result.trials) == len(study.trials)
    # a third run with the same total does nothing
    fast(digits_task, out, trials=5)
    assert len(load(out).trials) == len(study.trials)
    # a different configuration for the same folder is refused
    with pytest.raises(ConfigError, match="already holds a study made with budget='macs<=60%'.*"
                                          "use a new --out"):
        fast(digits_task, out, budget="macs<=50%", trials=6)
    # so is another fine-tune precision: its trials' metrics would not compare
    with pytest.raises(ConfigError, match="made with precision='fp32', not 'bf16'"):
        fast(digits_task, out, precision="bf16", trials=6)


def test_random_candidates_over_the_budget_are_screened_into_one_journal_line(digits_task,
                                                                              tmp_path):
    """A random search screens its draws before a trial exists: a skipped one is a single
    CREATE_TRIAL line holding all it records; the evaluated ones go through ask/tell."""
    out = tmp_path / "run"
    fast(digits_task, out, strategy="random", budget="macs<=20%", trials=2)
    lines = [json.loads(line) for line in (out / "study.log").read_text().splitlines()]
    study = load(out)
    skipped = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    evaluated = [t for t in study.trials if t.user_attrs.get("feasible") is True]
    assert skipped and len(evaluated) == 2
    assert sum(line["op_code"] == 4 for line in lines) == len(study.trials)  # CREATE_TRIAL
    for t in skipped:
        assert t.user_attrs["screened"] is True and t.constraints["macs"] > 0
        assert not any(line.get("trial_id") == t._trial_id for line in lines)
        assert t.user_attrs["worker"] and t.user_attrs["policy"]["provenance"]["trial"] == t.number
    for t in evaluated:
        assert "screened" not in t.user_attrs
        assert sum(line.get("trial_id") == t._trial_id for line in lines) > len(t.params)


def test_a_sampled_search_starts_from_the_uniform_policy_at_the_budget(digits_task, tmp_path):
    fast(digits_task, tmp_path / "tpe", strategy="tpe", trials=2)
    first = load(tmp_path / "tpe").trials[0]
    assert first.user_attrs["warm_start"] == "uniform" and first.user_attrs["feasible"]
    assert len({v for k, v in first.params.items() if k.endswith("/prune")}) == 1
    fast(digits_task, tmp_path / "uniform", strategy="uniform", trials=1)
    assert load(tmp_path / "uniform").trials[0].params == first.params  # its first candidate
    # 8-bit weights cut no MACs: the float setting needs the least pruning, so it goes first
    assert {v for k, v in first.params.items() if k.endswith("/bits")} == {32}
    starts = sum("warm_start" in t.user_attrs for t in load(tmp_path / "tpe").trials)
    fast(digits_task, tmp_path / "tpe", strategy="tpe", trials=3)  # a resume queues nothing
    assert sum("warm_start" in t.user_attrs for t in load(tmp_path / "tpe").trials) == starts
    fast(digits_task, tmp_path / "none", strategy="tpe", trials=1, warm_start="none")
    assert not any("warm_start" in t.user_attrs for t in load(tmp_path / "none").trials)
    fast(digits_task, tmp_path / "random", strategy="random", trials=1)  # a baseline: never
    assert not any("warm_start" in t.user_attrs for t in load(tmp_path / "random").trials)


def test_the_refined_start_gives_the_budgets_room_to_the_layers_hurt_most(digits_task, tmp_path):
    """Under size<=10% the uniform start (8 bits, pruned) leaves room that one layer can take
    back: the second trial is that start with the moves that gained, unfilled (each to the
    nearest level that builds another model: neighbouring prune ratios can keep the same
    channel blocks)."""
    fast(digits_task, tmp_path / "refined", strategy="tpe", budget="size<=10%", trials=2)
    first, second = load(tmp_path / "refined").trials[:2]
    assert first.user_attrs["warm_start"] == "uniform"
    assert second.user_attrs["warm_start"] == "refined" and second.user_attrs["feasible"]
    assert "fill" not in second.user_attrs["policy"]["provenance"]
    space = SearchSpace.embedded("digits").resolve(
        build_inventory(digits_task.model, digits_task.example_input))
    given_back = [k for k in first.params if second.params[k] != first.params[k]]
    assert given_back
    for name in given_back:  # less compressed, never more
        levels = space.params[name].levels()
        assert levels.index(second.params[name]) < levels.index(first.params[name])
    assert second.user_attrs["policy"]["layers"] != first.user_attrs["policy"]["layers"]
    fast(digits_task, tmp_path / "uniform", strategy="tpe", budget="size<=10%", trials=2,
         warm_start="uniform")
    assert [t.user_attrs.get("warm_start") for t in load(tmp_path / "uniform").trials[:2]] == [
        "uniform", None]


def test_on_the_target_the_refined_start_is_placed_by_timings(digits_task, tmp_path):
    """On the target the refined start is packed from the uniform start's timing and timed
    before it is a trial (:func:`~autocompress.engine.refine.place_timed`): it gives a layer
    back, and its trial is judged on that measurement and meets the guarded limit. Size is
    the clause that binds, so the latency clause leaves room that timing noise cannot
    take away; a latency clause alone puts the start within a few percent of its limit."""
    from autocompress.engine.judge import MEASURED_GUARD

    fast(digits_task, tmp_path / "run", strategy="tpe", budget="size<=10%,latency<=0.9x",
         target="torch-1t-b8", trials=2)
    first, second = load(tmp_path / "run").trials[:2]
    assert [first.user_attrs["warm_start"], second.user_attrs["warm_start"]] == [
        "uniform", "refined"]
    assert any(second.params[k] != first.params[k] for k in first.params)
    assert second.user_attrs["latency_basis"] == "measured" and second.user_attrs["feasible"]
    assert second.user_attrs["measured_ratio"] <= 0.9 * (1 - MEASURED_GUARD)


def test_trial_of_a_dead_process_is_failed_and_run_again(digits_task, tmp_path):
    """What a kill -9 leaves behind: a RUNNING trial whose process is gone."""
    out = tmp_path / "run"
    fast(digits_task, out, trials=2, strategy="random")
    study = load(out)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a real process id that no longer exists
    trial = study.ask()
    inv = build_inventory(digits_task.model, digits_task.example_input)
    SearchSpace.embedded("digits").resolve(inv).suggest(trial)  # started, never told
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    killed, killed_params = trial.number, dict(trial.params)
    said: list[str] = []
    fast(digits_task, out, trials=4, strategy="random", log=said.append)
    study = load(out)
    assert study.trials[killed].state == TrialState.FAIL
    assert study.trials[killed].user_attrs["error"] == "process died (resumed run)"
    assert any(f"trial(s) {killed} of a killed run marked FAIL" in s for s in said)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    # 4 evaluated; the killed candidate (random parameters) may be over the budget, then it
    # is re-run, recorded as skipped and not counted
    assert len([t for t in finished if t.user_attrs["feasible"]]) == 4
    rerun = [t for t in finished if t.user_attrs.get("requeued_from") == killed]
    assert len(rerun) == 1 and rerun[0].params == killed_params  # its candidate ran again


def test_same_seed_same_trials(digits_task, tmp_path):
    a = fast(digits_task, tmp_path / "a", trials=3, seed=3)
    b = fast(digits_task, tmp_path / "b", trials=3, seed=3)
    ta, tb = load(tmp_path / "a").trials, load(tmp_path / "b").trials
    assert [t.params for t in ta] == [t.params for t in tb]
    assert [t.values for t in ta] == [t.values for t in tb]
    assert a.best_metric == b.best_metric


def test_uniform_baseline_meets_the_budget_with_one_setting(digits_task, tmp_path):
    result = fast(digits_task, tmp_path / "run", strategy="uniform", trials=3)
    study = load(tmp_path / "run")
    assert result.exit_status == 0 and len(study.trials) == 3
    for t in study.trials:
        assert t.user_attrs["strategy"] == "uniform" and t.user_attrs["feasible"]
        prunes = {v for k, v in t.params.items() if k.endswith("/prune")}
        bits = {v for k, v in t.params.items() if k.endswith("/bits")}
        assert len(prunes) == 1  # one ratio everywhere
        assert len(bits) <= 2  # one bit-width (snapped into layers that only allow 8/32)
    # the first candidate is the least compressing feasible one: float weights, dense ranks
    first = study.trials[0].params
    assert first["features.2/bits"] == 32 and first["features.2/rank"] == 1.0
    # its prune ratio is the smallest feasible one (bisection), the next step down is not
    prune = first["features.2/prune"]
    space_inv = build_inventory(digits_task.model, digits_task.example_input)
    assert study.trials[0].user_attrs["macs"] <= 0.6 * space_inv.total_macs
    assert prune > 0


def test_greedy_baseline_uses_sensitivities(digits_task, tmp_path):
    result = fast(digits_task, tmp_path / "run", strategy="greedy", trials=2)
    study = load(tmp_path / "run")
    table = study.user_attrs["greedy_sensitivity"]
    assert "features.2/prune" in table and len(table["features.2/prune"]) > 2
    base = table["features.2/prune"]["0.0"]
    assert base == pytest.approx(study.user_attrs["baseline"]["metric"])
    assert result.exit_status == 0
    assert all(t.user_attrs["feasible"] and t.user_attrs["strategy"] == "greedy"
               for t in study.trials)


def test_pareto_mode_with_nsga2(digits_task, tmp_path):
    fast(digits_task, tmp_path / "run", strategy="nsga2", mode="pareto", trials=3)
    study = load(tmp_path / "run")
    assert len(study.directions) == 2
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert len(t.values) == 2 and t.values[1] == t.user_attrs["macs"]  # cost = budget metric


def test_latency_budget_uses_the_latency_table(digits_task, tmp_path, monkeypatch):
    # An empty shared table, so filling proposals has new layer shapes to time whatever ran before.
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    # The uniform start alone, so the second trial is a filled proposal (a refined start is not).
    fast(digits_task, out, budget="latency<=0.8x", target="torch-1t-b8", trials=2,
         warm_start="uniform")
    study = load(out)
    assert (out / "latency_lut.json").is_file()
    # the table's one-off timings while a proposal was filled to the budget are recorded on its
    # trial, apart from the screening's: the loop's total holds both
    in_fills = sum(t.user_attrs.get("lut_measure_fill_s", 0.0) for t in study.trials)
    in_screens = sum(t.user_attrs["lut_measure_s"] for t in study.trials)
    assert in_fills > 0 and "lut_measure_fill_s" in study.trials[-1].user_attrs
    assert in_fills + in_screens <= study.user_attrs["lut_measure_loop_s"] + 1e-6
    # predictions are speed ratios to the table's own time of the uncompressed model
    lut = LatencyLUT(out / "latency_lut.json", parse_target("torch-1t-b8"))
    reference = lut.whole_model_fit(build_inventory(digits_task.model, digits_task.example_input),
                              None, digits_task.example_input)["model_ms"]
    assert study.user_attrs["budget_baseline_latency_ms"] == pytest.approx(reference)
    for t in study.trials:
        a = t.user_attrs
        assert a["predicted_latency_ms"] > 0 and set(t.constraints) == {"latency"}
        assert a["predicted_latency_ms"] == pytest.approx(
            a["predicted_ratio"] * a["correction"] * reference)
        if a["latency_basis"] == "predicted":  # screened out: judged on the prediction
            assert t.constraints["latency"] == pytest.approx(
                a["predicted_latency_ms"] / (0.8 * reference) - 1 + MEASURED_GUARD)
            assert a["metric"] is None and not a["feasible"]
    # one-off measurements of new layer shapes are part of cost_s and reported apart
    assert all(0 <= t.user_attrs["lut_measure_s"] <= t.user_attrs["cost_s"] for t in study.trials)


def test_predictions_are_judged_against_the_tables_own_time_whatever_the_study_measured(
        digits_task, tmp_path):
    """A study baseline taken while the machine ran slower (or faster) moves no prediction's
    verdict: a predicted speed ratio has both its times from the table."""
    cfg = SearchConfig(task="digits", budget="latency<=0.5x", target="torch-1t-b8", trials=1,
                       finetune_steps=0, out=str(tmp_path / "run"), export=False)
    first = prepare_run(cfg, digits_task)
    assert first.lut is not None
    table_ms = table_model_ms(first.lut, first.inventory, digits_task)
    for factor in (1.25, 0.8):  # inside the table's 30% staleness tolerance
        stored = dict(first.study.user_attrs["baseline"])
        stored["latency_ms"] = factor * table_ms
        first.study.set_user_attr("baseline", stored)
        again = prepare_run(cfg, digits_task)
        assert again.objective.baseline.latency_ms == pytest.approx(factor * table_ms)
        assert again.objective.budget_baseline.latency_ms == pytest.approx(table_ms)
        assert again.study.user_attrs["budget_baseline_latency_ms"] == pytest.approx(table_ms)
        ok, violations = again.objective.check(
            again.objective.predict(CompressionPolicy(layers={})).with_latency(0.55 * table_ms))
        # 0.55x is over 0.5x (told with the guard); on the target close enough to be timed
        assert violations["latency"] == pytest.approx(0.1 + MEASURED_GUARD) and not ok


def test_the_fine_tune_lr_is_the_tasks_unless_the_search_sets_one(digits_task, tmp_path):
    task = dataclasses.replace(digits_task, lr=5e-4)  # as a pretrained model's task sets it
    cfg = SearchConfig(task="digits", budget="macs<=80%", trials=1, finetune_steps=0,
                       out=str(tmp_path / "a"), export=False)
    prep = prepare_run(cfg, task)
    resolved = yaml.safe_load((tmp_path / "a" / "config.resolved.yaml").read_text())
    assert prep.config.lr == resolved["lr"] == resolved["finetune"]["lr"] == 5e-4
    assert prep.objective.settings.lr == 5e-4
    given = cfg.model_copy(update={"lr": 2e-3, "out": str(tmp_path / "b")})
    assert prepare_run(given, task).config.lr == 2e-3
    assert digits_task.lr == 1e-3


def test_config_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("task: digits-mlp\nfinetune-steps: 7\ntrials: 9\n")
    cfg = SearchConfig.build(cfg_file, {"trials": 2, "seed": None})
    assert (cfg.task, cfg.finetune_steps, cfg.trials, cfg.seed) == ("digits-mlp", 7, 2, 0)
    assert cfg.out == "results/digits-mlp"
    cfg_file.write_text("trails: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'trails'; valid keys: task, space"):
        SearchConfig.build(cfg_file)
    with pytest.raises(ConfigError, match="strategy 'bayes' is not one of tpe, nsga2, random"):
        SearchConfig.build(None, {"strategy": "bayes"})
    with pytest.raises(ConfigError, match="trials=0 is invalid"):
        SearchConfig.build(None, {"trials": 0})


def test_latency_table_fills_of_a_baselines_planning_are_recorded(digits_task, tmp_path):
    """The uniform baseline predicts candidates between trials (bisection on the budget): the
    table's fills there are outside every trial's lut_measure_s, and the study records them."""
    out = tmp_path / "run"
    fast(digits_task, out, strategy="uniform", budget="latency<=0.9x", target="torch-1t-b6",
         trials=2)
    study = load(out)
    in_trials = sum(t.user_attrs["lut_measure_s"] for t in study.trials)
    assert study.user_attrs["lut_measure_loop_s"] > in_trials
    fast(digits_task, out, strategy="uniform", budget="latency<=0.9x", target="torch-1t-b6",
         trials=3)  # a resumed run adds its own
    assert load(out).user_attrs["lut_measure_loop_s"] >= study.user_attrs["lut_measure_loop_s"]


def test_on_the_target_the_refinement_spends_the_room_the_start_timed(digits_task, tmp_path):
    """The refined start's screen scales each prediction by the uniform start's timing over
    its prediction: a start timed well under the limit leaves room even where its prediction
    is over it (all-MiniLM-L6-v2 at 0.4x: predicted 0.412, timed 0.365, and nothing was
    given back), and one timed over it leaves none."""
    from autocompress.engine.baselines import uniform_starts
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.judge import MEASURED_GUARD
    from autocompress.engine.session import prepare_run

    cfg = SearchConfig.build(None, {
        "task": "digits", "budget": "latency<=0.6x", "target": "torch-1t-b8", "trials": 1,
        "finetune_steps": 1, "out": str(tmp_path / "run"), "export": False})
    objective = prepare_run(cfg, task=digits_task, warm_start=False).objective
    start = next(uniform_starts(objective.space, objective.feasible_params))
    policy = objective.space.policy_from_params(start)
    assert objective.screen_from_timing(start) == objective.screen_fill  # not timed yet
    predicted = objective.judge.predicted_ratio(objective.predict_raw(policy))
    baseline_ms = 2.0
    for timed, fits in ((0.6 * 0.8, True), (0.6 * 1.02, False)):
        objective.judge.remember(policy, timed * baseline_ms, baseline_ms)
        ok, constraints = objective.screen_from_timing(start)(start)
        assert ok is fits
        assert constraints["latency"] == pytest.approx(timed / 0.6 - 1 + MEASURED_GUARD)
        # a point one layer from it is scaled alike: its prediction times timed / predicted
        moved = {**start, next(k for k in start if k.endswith("/prune")): 0.0}
        raw = objective.judge.predicted_ratio(objective.predict_raw(
            objective.space.policy_from_params(moved)))
        assert objective.screen_from_timing(start)(moved)[1]["latency"] == pytest.approx(
            raw * timed / predicted / 0.6 - 1 + MEASURED_GUARD)


def test_after_a_miss_the_refinement_reads_timings_off_the_line_through_both(digits_task,
                                                                           tmp_path):
    """Once a packing of the refined start times over the limit, a point's measured ratio is
    read off the line through the start's timing and the miss's: both timed points read as
    timed (the miss is screened out, the start keeps its room), and a point between them
    reads between."""
    from autocompress.engine.baselines import uniform_starts
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.judge import MEASURED_GUARD
    from autocompress.engine.session import prepare_run

    cfg = SearchConfig.build(None, {
        "task": "digits", "budget": "latency<=0.6x", "target": "torch-1t-b8", "trials": 1,
        "finetune_steps": 1, "out": str(tmp_path / "run"), "export": False})
    objective = prepare_run(cfg, task=digits_task, warm_start=False).objective
    start = next(uniform_starts(objective.space, objective.feasible_params))
    prunes = [k for k in start if k.endswith("/prune") and start[k] > 0]
    assert len(prunes) >= 2
    half = {**start, prunes[0]: 0.0}  # one layer given back
    missed = {**half, prunes[1]: 0.0}  # two layers given back
    policy = objective.space.policy_from_params

    def predicted(params):
        return objective.judge.predicted_ratio(objective.predict_raw(policy(params)))

    assert predicted(start) < predicted(half) < predicted(missed)
    objective.judge.remember(policy(start), 0.50, 1.0)
    objective.judge.remember(policy(missed), 0.62, 1.0)
    screen = objective.screen_from_timing(start, missed)

    def read(params):
        return (screen(params)[1]["latency"] - MEASURED_GUARD + 1) * 0.6

    assert read(start) == pytest.approx(0.50) and screen(start)[0]
    assert read(missed) == pytest.approx(0.62) and not screen(missed)[0]
    share = (predicted(half) - predicted(start)) / (predicted(missed) - predicted(start))
    assert read(half) == pytest.approx(0.50 + 0.12 * share)


def test_progress_in_a_log_is_one_line_per_trial(capsys):
    """The bar the in-process search and Ray's callback share: where stderr is not a
    terminal (a batch job's log; here pytest's capture), a line per trial, none for a
    repeat, and the slow step's text once."""
    from autocompress.engine.progress import TrialBar, slow_step

    with TrialBar("search (ray)", total=2, done=0, enabled=True) as bar:
        bar.update(1, "best accuracy 0.9")
        bar.update(1, "best accuracy 0.9", line=False)
        bar.update(2, "best accuracy 0.95")
    with slow_step(True, "timing the uniform warm start ..."):
        pass
    with TrialBar("search", total=1, done=0, enabled=False) as quiet:
        quiet.update(1, "nothing")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 3)[:3:2] for line in lines[:2]] == [["search", "1/2"],
                                                              ["search", "2/2"]]
    assert lines[1].endswith("best accuracy 0.95") and len(lines) == 3
    assert lines[2] == "timing the uniform warm start ..."
