"""benchmarks/search_quality.py: the row builder on a real tiny search, and the tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"task", "budget", "strategy", "seed", "accuracy", "measured_latency_ms",
            "baseline_latency_ms", "size_bytes", "trials", "wall_s", "mode", "feasible",
            "meets_budget", "controller_overhead_share", "predicted_latency_ms", "speedup"}


def _bench():  # the benchmark is a script, not a package module
    spec = importlib.util.spec_from_file_location("search_quality",
                                                  ROOT / "benchmarks" / "search_quality.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(**kw):
    row = {"task": "digits", "budget": "latency<=0.5x", "strategy": "tpe", "mode": "constrained",
           "seed": 0, "target": "ort-cpu-1t-b64", "trials": 4, "trials_requested": 4, "finetune_steps": 10,
           "feasible": True, "accuracy": 0.97, "baseline_accuracy": 0.99,
           "predicted_latency_ms": 0.4, "measured_latency_ms": 0.5, "baseline_latency_ms": 1.0,
           "speedup": 2.0, "speedup_paired": 2.1, "measured_latency_int8_ms": None, "size_bytes": 100,
           "baseline_size_bytes": 400, "meets_budget": True, "wall_s": 10.0, "trials_s": 8.0,
           "controller_overhead_share": 0.01, "cost_share": 0.005, "sampler_share": 0.005,
           "loadavg_1m": 1.0, "cpus": 2, "finished_utc": "2026-01-01T00:00:00Z"}
    row.update(kw)
    return row


def test_tables_and_goals_from_rows() -> None:
    sq = _bench()
    rows = [_row(seed=0, accuracy=0.97), _row(seed=1, accuracy=0.99),
            _row(strategy="uniform", accuracy=0.95),
            _row(strategy="random", accuracy=0.96, seed=1, meets_budget=False)]
    md = sq.tables(rows)
    assert "98.00 ± 1.41" in md  # tpe: mean +- sample std over the two seeds, in %
    assert "none feasible (0/1 met)" in md  # random's only run missed the budget re-measured
    # ranked by the share of its own runs that met the budget re-measured, then by accuracy
    assert "tpe 98.00 (2/2 met) vs best of uniform/random, uniform 95.00 (1/1 met): **met**" in md
    fewer_seeds = sq.tables([_row(strategy="nsga2", mode="pareto", accuracy=0.99),
                             _row(strategy="uniform", accuracy=0.95),
                             _row(strategy="uniform", seed=1, accuracy=0.95)])
    assert "nsga2 99.00 (1/1 met) vs best of uniform/random, uniform 95.00 (2/2 met): **met**" \
        in fewer_seeds  # one run fewer is not one miss more
    fewer_met = sq.tables([_row(seed=0, accuracy=0.99, meets_budget=False),
                           _row(seed=1, accuracy=0.99), _row(strategy="uniform", accuracy=0.95),
                           _row(strategy="uniform", seed=1, accuracy=0.95)])
    assert "tpe 99.00 (1/2 met) vs best of uniform/random, uniform 95.00 (2/2 met): **MISSED**" \
        in fewer_met
    assert "gap 1.00 points: **met**" in md
    assert "controller overhead < 2% of trial time (4 trials x 10 steps, ort-cpu-1t-b64): 1.00%" in md
    # a run still going: the searched strategy has rows, neither baseline has one yet
    partial = sq.tables([_row(seed=0, accuracy=0.97)])
    assert "tpe 97.00 (1/1 met) vs best of uniform/random" in partial
    merged = sq.merge_rows([_row(accuracy=0.5)], path=ROOT / "does-not-exist.json")
    assert len(merged) == 1 and merged[0]["accuracy"] == 0.5


def test_goals_tally_seed_by_seed() -> None:
    """A mean gap from one lucky seed shows as such: won, tied and lost counted per seed."""
    sq = _bench()
    rows = [_row(seed=0, accuracy=0.99), _row(seed=1, accuracy=0.95), _row(seed=2, accuracy=0.96),
            _row(strategy="uniform", seed=0, accuracy=0.95),
            _row(strategy="uniform", seed=1, accuracy=0.95),
            _row(strategy="uniform", seed=2, accuracy=0.97),
            _row(strategy="random", seed=0, accuracy=0.90),
            _row(strategy="random", seed=1, accuracy=0.99, meets_budget=False)]
    md = sq.tables(rows)
    # tpe's mean 96.67 beats uniform's 95.67, but seed by seed it is 1 won, 1 tied, 1 lost;
    # random's seed-1 export missed the budget, so it ranks below tpe's there; no seed 2 run
    assert "seeds won-tied-lost against uniform 1-1-1, random 2-0-0" in md


def test_pooled_pairs_every_setting_seed_by_seed() -> None:
    """Across settings: one pair per setting and seed, a missed export loses, the mean gap
    and its bootstrap interval over the pairs where both met."""
    sq = _bench()
    rows = []
    for budget, gains in (("latency<=0.5x", (0.01, 0.0, 0.02)), ("size<=15%", (0.03, 0.01, 0.0))):
        for seed, gain in enumerate(gains):
            rows += [_row(budget=budget, seed=seed, accuracy=0.95 + gain),
                     _row(budget=budget, strategy="uniform", seed=seed, accuracy=0.95)]
    rows += [_row(budget="latency<=0.25x", seed=0, accuracy=0.9, meets_budget=False),
             _row(budget="latency<=0.25x", strategy="uniform", seed=0, accuracy=0.8),
             # nobody met it: left out of the pairs
             _row(budget="latency<=0.35x", seed=0, meets_budget=False),
             _row(budget="latency<=0.35x", strategy="uniform", seed=0, meets_budget=False)]
    df = sq.pd.DataFrame(rows).assign(setting="s")
    df["acc_ok"] = df["accuracy"].where(df["meets_budget"])
    row = sq.pooled(df, ["tpe", "uniform"]).set_index("against").loc["uniform"]
    assert row["pairs"] == 7 and row["both met"] == 6
    assert row["won-tied-lost"] == "4-2-1"  # the missed export loses to uniform's that met
    assert row["mean gap (points)"] == pytest.approx(100 * 0.07 / 6)
    assert 0 < row["95% CI low"] < row["mean gap (points)"] < row["95% CI high"] <= 3.0 + 1e-9
    assert "### Pooled over settings" in sq.tables(rows)


@pytest.mark.slow
def test_run_row_real_search(tmp_path: Path) -> None:
    sq = _bench()
    row = sq.run_row("digits", "latency<=0.5x", "uniform", 0, trials=2, steps=5, work=tmp_path,
                     rounds=2)
    assert set(row) >= ROW_KEYS
    assert row["trials"] <= 2 and row["finetune_steps"] == 5
    assert (tmp_path / "digits" / "baseline.onnx").is_file()
    # timings on a loaded machine may judge both candidates over the budget: then the row
    # says so and holds no re-measurement; either way its fields agree with each other
    assert row["feasible"] == (row["n_feasible_trials"] > 0)
    if row["feasible"]:
        assert row["measured_latency_ms"] > 0 and row["baseline_latency_ms"] > 0
        assert row["speedup"] == pytest.approx(row["baseline_latency_ms"]
                                               / row["measured_latency_ms"])
        assert 0.0 <= row["accuracy"] <= 1.0
    else:
        assert row["measured_latency_ms"] is None and row["accuracy"] is None
        assert row["meets_budget"] is False
    assert 0.0 <= row["controller_overhead_share"] <= 1.0
    # a second call reuses the cached row instead of searching again
    assert sq.run_row("digits", "latency<=0.5x", "uniform", 0, trials=2, steps=5,
                      work=tmp_path) == row


def test_overhead_leaves_out_the_time_a_killed_run_was_down() -> None:
    """A resumed run marks the trial it was killed in FAIL on resuming: that trial's cycle holds
    the minutes nothing ran, and counting it would report them as controller overhead."""
    import datetime as dt

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState

    t0 = dt.datetime(2026, 1, 1)
    study = optuna.create_study()

    def add(start_s: float, end_s: float, state: TrialState) -> None:
        work = {"apply_s": 0.0, "finetune_s": 1.5, "eval_s": 0.0}
        study.add_trial(FrozenTrial(
            number=0, trial_id=0, state=state, value=0.9 if state != TrialState.FAIL else None,
            values=None, datetime_start=t0 + dt.timedelta(seconds=start_s),
            datetime_complete=t0 + dt.timedelta(seconds=end_s), params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs=work if state != TrialState.FAIL else {}, system_attrs={},
            intermediate_values={}))

    add(0, 2, TrialState.COMPLETE)
    add(2, 600, TrialState.FAIL)  # killed at 3 s, marked FAIL when the run resumed at 600 s
    add(600, 602, TrialState.COMPLETE)
    ov = _bench().controller_overhead(study)
    assert ov["trials_s"] == pytest.approx(4.0)  # 2 s + 2 s: the down time is left out
    assert ov["controller_overhead_share"] == pytest.approx(1.0 / 4.0)


def test_minilm_goals_cosine_floor_and_seed_by_seed() -> None:
    """minilm's goals: tpe's cosine >= 0.97 at 0.6x on every seed, and above uniform and random
    seed by seed (a baseline whose pick missed the budget re-measured loses)."""
    sq = _bench()
    m = {"task": "minilm", "budget": "latency<=0.6x", "target": "ort-cpu-1t-b8", "lr": 1e-4,
         "baseline_accuracy": 1.0}
    rows = [_row(**m, seed=0, accuracy=0.975), _row(**m, seed=1, accuracy=0.98),
            _row(**m, strategy="uniform", seed=0, accuracy=0.96),
            _row(**m, strategy="uniform", seed=1, accuracy=0.99),
            _row(**m, strategy="random", seed=0, accuracy=0.99, meets_budget=False),
            _row(**m, strategy="random", seed=1, accuracy=0.97)]
    md = sq.tables(rows)
    setting = "4 trials x 10 steps, ort-cpu-1t-b8, lr 0.0001"
    assert (f"- minilm latency<=0.6x ({setting}): tpe's metric >= 0.97 on every seed, paired "
            "measured speedup in brackets: seed 0 0.9750 (2.10x), seed 1 0.9800 (2.10x): "
            "**met**") in md
    assert "uniform 1-0-1 over seeds 0, 1; random 2-0-0 over seeds 0, 1: **MISSED**" in md
    rows[3]["accuracy"] = 0.95
    rows[0]["meets_budget"] = False
    md = sq.tables(rows)
    assert "seed 0 missed the budget, seed 1 0.9800 (2.10x): **MISSED**" in md
    # both missed on seed 0 against random: a tie, not a win
    assert "uniform 1-0-1 over seeds 0, 1; random 1-1-0 over seeds 0, 1: **MISSED**" in md
    # rows without an lr (the digits ones) keep their setting label
    assert "| 4 trials x 10 steps, ort-cpu-1t-b64 |" in sq.tables([_row()])
    # 0.4x has no cosine floor, but the seed-by-seed goal holds there too
    low = {**m, "budget": "latency<=0.4x"}
    md = sq.tables([_row(**low, seed=0, accuracy=0.8),
                    _row(**low, strategy="uniform", seed=0, accuracy=0.6)])
    assert f"- minilm latency<=0.4x ({setting}): tpe's metric" not in md
    assert (f"- minilm latency<=0.4x ({setting}): tpe beats uniform and random seed by seed "
            "(won-tied-lost): uniform 1-0-0 over seeds 0; random not run: **MISSED**") in md


def test_measure_feeds_named_integer_inputs(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph fed token ids and a mask by name gets the task's own example input repeated to
    the batch (int64); one float input gets the standard-normal data it always had."""
    import torch

    import autocompress.tasks
    from autocompress.runtime.onnx import export_onnx

    sq = _bench()

    class Tok(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return (self.emb(input_ids) * attention_mask[..., None]).mean(1)

    x = {"input_ids": torch.zeros(1, 5, dtype=torch.long),
         "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    export_onnx(Tok(), x, tmp_path / "tok.onnx")
    export_onnx(torch.nn.Linear(4, 2), torch.zeros(1, 4), tmp_path / "lin.onnx")
    assert sq.measure_files({"baseline": str(tmp_path / "lin.onnx")}, 1, 3, 1)["latency_ms"][
        "baseline"] > 0
    with pytest.raises(ValueError, match="need --feed-task"):
        sq.measure_files({"baseline": str(tmp_path / "tok.onnx")}, 1, 3, 1)
    monkeypatch.setattr(autocompress.tasks, "load_task",
                        lambda name: type("T", (), {"example_input": x})())
    lat = sq.measure_files({"baseline": str(tmp_path / "tok.onnx"),
                            "best": str(tmp_path / "tok.onnx")}, 1, 3, 2, task="toy")
    assert lat["batch"] == 3 and lat["latency_ms"]["best"] > 0
