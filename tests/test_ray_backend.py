"""``--backend ray`` on a real local Ray runtime: Tune trials of the shared objective, ASHA, export.

One run of 5 trials on 2 CPUs, one trial at a time. The first is the uniform warm start; the
other four are fixed (points_to_evaluate) so the assertions do not rest on luck: the
uncompressed model breaks
``macs<=60%`` (recorded, never fine-tuned), a mild policy sets ASHA's first rung, and two
of the most compressed policies score far below it at the first rung, so ASHA stops at
least one early. (With two at a time, a compressed model, which trains faster, could reach
the first rung before the mild one had set it: the test failed once that way.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autocompress.errors import ConfigError

STEPS = 30
EVERY = 10
TRIALS = 5


def _cfg(out: Path, **kw):
    from autocompress.engine.config import SearchConfig

    base = {"task": "digits", "budget": "macs<=60%", "trials": TRIALS, "finetune_steps": STEPS,
            "report_every": EVERY, "val_samples": 128, "out": str(out), "export": False,
            "seed": 1,
            # The planned points below must run as given (one over the budget, one mild, ...);
            # filled to the budget's edge they would all become feasible look-alikes.
            "fill_budget": False}
    return SearchConfig.build(None, {**base, **kw})


def _points(digits_task):
    from autocompress.inventory import build_inventory
    from autocompress.space import default_space

    space = default_space("digits").resolve(build_inventory(digits_task.model,
                                                            digits_task.example_input))
    smallest = space.smallest_params()
    return [
        space.identity_params(),                       # 100% MACs: over budget
        space.uniform_params(prune=0.5, bits=32),      # mild: good accuracy after 10 steps
        smallest,                                      # everything at its most compressed
        {**space.uniform_params(prune=0.75, bits=8, rank_fraction=0.125), **{
            k: v for k, v in smallest.items() if k.endswith("/sparsity")}},
    ]


@pytest.fixture(scope="module")
def ray_run(digits_task, tmp_path_factory):
    import ray

    from autocompress.engine.ray_backend import run_ray

    out = tmp_path_factory.mktemp("ray") / "run"
    t0 = time.monotonic()
    result = run_ray(_cfg(out), task=digits_task, num_cpus=2, max_concurrent=1,
                     points_to_evaluate=_points(digits_task))
    seconds = time.monotonic() - t0
    print(f"ray run: {seconds:.0f} s")
    assert not ray.is_initialized()  # run_ray shut down the runtime it started
    return result


def test_ray_runs_the_trials_into_the_study(ray_run):
    study = ray_run.study
    assert len(study.trials) == TRIALS
    assert len({t.system_attrs["ray_trial_id"] for t in study.trials}) == TRIALS
    assert (ray_run.out / "study.log").is_file()
    assert (ray_run.out / "ray" / "autocompress").is_dir()  # storage_path under the results
    for t in study.trials:
        assert t.user_attrs["backend"] == "ray"
        assert t.user_attrs["policy"]["provenance"]["trial"] == t.number
        assert set(t.params) == set(study.trials[0].params)


def test_ray_starts_from_the_uniform_warm_start(ray_run, digits_task, tmp_path):
    """As with Optuna alone, the first trial is the uniform policy at the budget's edge."""
    from autocompress.engine.session import prepare_run, warm_starts

    cfg = _cfg(tmp_path / "fresh")
    prep = prepare_run(cfg, digits_task, warm_start=False)
    starts = warm_starts(cfg, prep.objective)
    assert starts and starts[0][1] == "uniform"
    first = min(ray_run.study.trials, key=lambda t: t.number)
    assert first.params == pytest.approx(starts[0][0])
    assert first.user_attrs["feasible"] is True
    assert first.user_attrs["warm_start"] == "uniform"


def test_asha_stops_a_trial_early(ray_run):
    stopped = [t for t in ray_run.study.trials if t.user_attrs.get("stopped_by") == "asha"]
    assert stopped, [(t.state, t.intermediate_values) for t in ray_run.study.trials]
    for t in stopped:
        assert t.state == TrialState.PRUNED
        assert t.intermediate_values and max(t.intermediate_values) < STEPS
        assert t.user_attrs["metric"] == t.intermediate_values[max(t.intermediate_values)]
    finished = [t for t in ray_run.study.trials
                if t.state == TrialState.COMPLETE and t.user_attrs["feasible"]]
    assert finished
    for t in finished:  # a fine-tune that ran to the end reported every rung
        assert sorted(t.intermediate_values) == list(range(EVERY, STEPS, EVERY))
        assert t.values[0] == t.user_attrs["metric"]


def test_infeasible_candidate_recorded_and_not_finetuned(ray_run):
    over = [t for t in ray_run.study.trials if t.user_attrs["feasible"] is False]
    assert over
    t = over[0]
    assert t.state == TrialState.COMPLETE
    assert t.values == [0.0]  # the worst accuracy: the contract's value for infeasible trials
    assert t.user_attrs["metric"] is None and t.user_attrs["finetune_s"] == 0.0
    assert t.constraints["macs"] > 0 and t.user_attrs["violations"]["macs"] > 0
    assert not t.intermediate_values


def test_same_exporter_and_report(ray_run, digits_task):
    from autocompress.cli.app import main
    from autocompress.export import export_results

    cfg = ray_run.config
    summary = export_results(ray_run.study, digits_task, ray_run.out, target=cfg.target,
                             budget=cfg.budget, measure=False)
    assert summary.n_trials == TRIALS and summary.best_metric is not None
    best = json.loads((ray_run.out / "best_policy.json").read_text())
    assert best["provenance"]["backend"] == "ray"
    assert main(["report", str(ray_run.out)]) == 0
    assert (ray_run.out / "report.html").stat().st_size > 1000


def test_filled_ray_trials_walk_off_policies_other_trials_took(digits_task, tmp_path):
    """Each Ray trial runs in its own process: the same proposal three times is filled to
    one edge point, and the later trials walk to policies no trial has trained (the run's
    TakenPoliciesActor actor), as the Optuna backend's do."""
    from autocompress.engine.ray_backend import run_ray
    from autocompress.engine.taken import policy_digest

    proposal = _points(digits_task)[1]  # uniform prune 0.5: filled back to the budget's edge
    # The uniform start alone, so the three proposals follow it (a refined start would take one
    # of their trials).
    cfg = _cfg(tmp_path / "run", trials=4, finetune_steps=10, report_every=0, pruner="none",
               fill_budget=True, warm_start="uniform")
    result = run_ray(cfg, task=digits_task, num_cpus=2, max_concurrent=1,
                     points_to_evaluate=[proposal, proposal, proposal])
    trained = [t for t in result.study.trials if t.user_attrs["metric"] is not None]
    assert len(trained) == 4
    keys = [policy_digest(t.user_attrs["policy"]) for t in trained]
    assert len(set(keys)) == len(keys)  # no policy trained twice
    walked = [t for t in trained
              if "neighbour" in t.user_attrs["policy"]["provenance"].get("fill", {})]
    assert len(walked) >= 2  # the first fill may take the edge point; the others cannot


def test_baseline_strategies_are_refused(tmp_path):
    import autocompress as ac

    # Through ac.search: backend="ray" dispatches to the Ray backend, which refuses a
    # baseline before loading anything.
    with pytest.raises(ConfigError, match="baseline .* --backend optuna"):
        ac.search("digits", strategy="uniform", backend="ray", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="backend='dask' is invalid"):
        ac.search("digits", backend="dask", out=tmp_path / "y")


RESUME_SCRIPT = """
import sys
from autocompress.engine.config import SearchConfig
from autocompress.engine.ray_backend import run_ray
cfg = SearchConfig.build(None, dict(task="digits", budget="macs<=60%", trials=4,
    finetune_steps=400, report_every=100, val_samples=128, out=sys.argv[1], export=False,
    pruner="none"))
run_ray(cfg, num_cpus=2, max_concurrent=1)
"""


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc: parent ids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (Ray's GCS, raylet, workers)."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_interrupted_ray_run_resumes_with_tuner_restore(tmp_path, digits_task):
    """Kill the driver (and its Ray runtime) mid-experiment; the same call restores it."""
    import re

    from autocompress.engine.ray_backend import run_ray

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp = out / "ray" / "autocompress"

    def states() -> list[str]:
        found: list[str] = []
        for f in exp.glob("experiment_state-*.json"):
            with contextlib.suppress(OSError):
                found += re.findall(r'status\\?": \\?"([A-Z]+)', f.read_text())
        return found

    t0 = time.monotonic()
    try:
        # Tune saves its experiment state every few seconds: wait until it holds a finished
        # trial and a running one, then kill everything (no clean shutdown).
        while not ("TERMINATED" in states() and "RUNNING" in states()):
            assert proc.poll() is None, "the driver ended before the kill"
            assert time.monotonic() - t0 < 400, f"no finished trial in time: {states()}"
            time.sleep(0.5)
        before = states()
    finally:
        _kill_tree(proc)
    assert before.count("TERMINATED") < 4
    cfg = _cfg(out, trials=4, finetune_steps=400, report_every=100, pruner="none", seed=0)
    result = run_ray(cfg, task=digits_task, num_cpus=2, max_concurrent=1)
    trials = result.study.trials
    ids = [t.system_attrs["ray_trial_id"] for t in trials]
    assert len(ids) == len(set(ids)) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert [p.name for p in (out / "ray").iterdir()] == ["autocompress"]  # restored, not new


def test_unreachable_ray_address_is_a_one_line_error():
    import ray

    from autocompress.engine.ray_backend import init_ray

    with pytest.raises(ConfigError, match=r"no Ray head answers at '127.0.0.1:1'"):
        init_ray("127.0.0.1:1")
    assert not ray.is_initialized()
