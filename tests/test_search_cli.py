"""``autocompress search`` as a user runs it: real subprocesses, exit codes, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

CLI = [str(Path(sys.executable).with_name("autocompress"))]  # the installed console script
# Small and fast: a MACs budget needs no latency table; torch target avoids ONNX export.
FAST = ["--task", "digits", "--budget", "macs<=60%", "--target", "torch-1t",
        "--finetune-steps", "10"]


@pytest.fixture(scope="module")
def env(digits_task, _cache_dir):
    """The test session's cache (the digits baseline is trained there once)."""
    e = dict(os.environ)
    e["AUTOCOMPRESS_CACHE"] = _cache_dir
    e["PYTHONWARNINGS"] = "ignore"
    return e


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def load(out: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    return optuna.load_study(study_name="autocompress", storage=storage)


def test_bad_input_exits_2_with_one_line(env, tmp_path):
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("defaults:\n  prune: {low: 0.0, high: 1.5}\n")
    cases = {
        "space": (["--space", str(bad_space)],
                  f"search space {bad_space}: defaults: prune: prune value(s) [1.5] out of range"),
        "budget": (["--budget", "latency<0.5x"], "expected <metric><=<value>[unit]"),
        "strategy": (["--strategy", "bayes"],
                     "strategy 'bayes' is not one of tpe, nsga2, random, uniform, greedy"),
        "unit": (["--budget", "size<=3ms"], "unit 'ms' does not fit size"),
    }
    # Run the cases side by side: each pays the CLI's start-up time.
    procs = {
        name: subprocess.Popen(CLI + ["search", *FAST, "--trials", "1",
                                      "--out", str(tmp_path / name), *args],
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, (args, _) in cases.items()
    }
    for name, proc in procs.items():
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, (name, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("error: ") and "Traceback" not in err
        assert cases[name][1] in lines[0], (name, lines[0])
        assert not (tmp_path / name / "study.log").exists()  # nothing started


def test_impossible_budget_exits_3(env, tmp_path):
    out = tmp_path / "run"
    r = cli(["search", *FAST, "--budget", "macs<=0.1%", "--trials", "2", "--out", str(out)],
            env, tmp_path)
    assert r.returncode == 3, r.stderr
    assert "looks out of reach" in r.stderr and "Traceback" not in r.stderr
    assert "no trial met the budget" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meets_budget"] is False and summary["n_feasible"] == 0
    # the export's notes reach the terminal too, not only summary.json
    assert f"note: {summary['notes'][0]}" in r.stderr


# Two CLI runs with an export (~40 s): kept in the default run, it is issue 4's key check.
def test_search_exports_a_policy_that_apply_reproduces(env, tmp_path):
    out = tmp_path / "run"
    r = cli(["search", *FAST, "--trials", "3", "--seed", "1", "--out", str(out)], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best trial" in r.stdout and (out / "best_policy.json").is_file()
    # stderr is a pipe here, as in a batch job's log: one progress line per trial.
    lines = [line for line in r.stderr.splitlines() if line.startswith("search ")]
    assert len(lines) >= 3 and lines[-1].startswith("search 3/3 "), r.stderr
    best = json.loads((out / "best_policy.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    a = cli(["apply", "--task", "digits", "--policy", str(out / "best_policy.json"),
             "--out", str(tmp_path / "applied"), "--format", "json"], env, tmp_path)
    assert a.returncode == 0, a.stderr
    after = json.loads(a.stdout)["after"]
    for key in ("macs", "params", "size_bytes"):
        assert after[key] == best["metrics"][key] == summary[key], key
    study = load(out)
    trial = study.trials[summary["best_trial"]]
    assert trial.user_attrs["macs"] == after["macs"]
    assert summary["best_metric"] == pytest.approx(trial.user_attrs["metric"])


# Two CLI runs of 6 trials (~40-70 s): a real SIGKILL of a real process, kept in the default run.
def test_kill_9_then_rerun_resumes_keeping_finished_trials(env, tmp_path):
    out = tmp_path / "run"
    args = ["search", *FAST, "--finetune-steps", "60", "--trials", "6", "--out", str(out),
            "--no-export", "--strategy", "random"]
    proc = subprocess.Popen(CLI + args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done: list[optuna.trial.FrozenTrial] = []
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not (out / "study.log").exists():
                continue
            try:
                done = load(out).get_trials(states=(TrialState.COMPLETE,))
            except KeyError:  # the study is being created
                continue
            if len(done) >= 2:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = {t.number: (t.params, t.values) for t in load(out).get_trials(
        states=(TrialState.COMPLETE,))}
    assert 2 <= len(kept) < 6

    r = cli(args, env, tmp_path)
    assert r.returncode == 0, r.stderr
    study = load(out)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    # --trials is the total of evaluated trials (candidates over the budget are not counted)
    assert len([t for t in finished if t.user_attrs["feasible"]]) == 6
    for number, (params, values) in kept.items():  # nothing finished was lost or redone
        assert (study.trials[number].params, study.trials[number].values) == (params, values)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    killed = study.get_trials(states=(TrialState.FAIL,))
    if killed:  # the trial running at the kill was failed and its candidate run again
        assert "resuming" in r.stderr
        assert all(t.user_attrs["error"].startswith("process died") for t in killed)
        requeued = [t for t in finished if "requeued_from" in t.user_attrs]
        assert {t.user_attrs["requeued_from"] for t in requeued} <= {t.number for t in killed}
