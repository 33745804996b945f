"""report.html charts and ``autocompress report`` on a real study journal."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from test_export import BUDGET, INT8_POLICIES, build_study

from autocompress.cli.app import main
from autocompress.errors import InputFileError
from autocompress.export.results import load_run_study, write_tables
from autocompress.pareto import pick_best
from autocompress.report import (
    PLOT_IDS,
    TITLES,
    pareto_figure,
    policy_figure,
    progress_figure,
    write_report,
)


@pytest.fixture(scope="module")
def run_dir(digits_task, tmp_path_factory) -> Path:
    """A results folder holding only a study.log (3 trials + 1 pruned)."""
    root = tmp_path_factory.mktemp("reportrun")
    build_study(root / "study.log", digits_task, INT8_POLICIES)
    return root


@pytest.fixture(scope="module")
def study(run_dir: Path) -> optuna.Study:
    return load_run_study(run_dir)


def _summary(study: optuna.Study) -> dict:
    best = pick_best(study)
    assert best is not None
    return {"best_trial": best.number, "best_metric": best.user_attrs["metric"],
            "metric_name": "accuracy", "budget": BUDGET,
            "measured_latency_ms": best.user_attrs["predicted_latency_ms"] * 1.1,
            "budget_limits": {"latency": 0.8 * study.user_attrs["baseline"]["latency_ms"]},
            "meets_budget": True}


def test_report_has_the_three_charts_and_tables(study: optuna.Study, tmp_path: Path):
    path = write_report(study, tmp_path / "report.html", _summary(study))
    page = path.read_text()
    for div_id in PLOT_IDS:
        assert f'id="{div_id}"' in page, div_id
    for title in TITLES.values():
        assert title in page, title
    assert 'id="top-trials"' in page and 'id="summary"' in page
    # plotly.js inlined exactly once: the page opens with no network
    assert page.count("plotly.js v") == 1 and not re.search(r"<script[^>]+src=", page)
    assert "meets_budget" in page and html.escape(BUDGET) in page


def test_pareto_figure_traces_and_budget_line(study: optuna.Study):
    summ = _summary(study)
    best = pick_best(study)
    fig = pareto_figure(study, study.trials, summ, best)
    names = [t.name for t in fig.data]
    assert names[0] == "feasible" and names[1].startswith("infeasible")
    assert "Pareto front" in names and "uncompressed baseline" in names
    assert any(n.startswith("best (trial 0)") for n in names)
    assert "best, re-measured after export" in names
    feasible = fig.data[0]
    assert sorted(feasible.y) == sorted(t.user_attrs["metric"] for t in study.trials[:2])
    line = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(line) == 1  # search and export limits agree here: one line
    assert line[0].x0 == pytest.approx(summ["budget_limits"]["latency"])
    assert fig.layout.xaxis.title.text == "latency (ms, predicted)"


def test_budget_lines_from_the_study_and_the_fresh_baseline(study: optuna.Study):
    """Without a summary the line comes from the study; a fresh baseline adds a second one."""
    base_ms = study.user_attrs["baseline"]["latency_ms"]
    fig = pareto_figure(study, study.trials, {}, pick_best(study))
    lines = [s.x0 for s in fig.layout.shapes if s.type == "line"]
    assert lines == [pytest.approx(0.8 * base_ms)]  # "latency<=0.8x" of the study's baseline
    summ = {**_summary(study), "baseline_latency_ms": 2 * base_ms,
            "budget_limits": {"latency": 1.6 * base_ms}}
    fig = pareto_figure(study, study.trials, summ, pick_best(study))
    lines = [s.x0 for s in fig.layout.shapes if s.type == "line"]
    assert lines == [pytest.approx(0.8 * base_ms), pytest.approx(1.6 * base_ms)]
    names = [t.name for t in fig.data]
    assert "uncompressed, re-measured after export" in names


def test_policy_figure_shows_the_best_policy(study: optuna.Study):
    best = pick_best(study)
    fig = policy_figure(best)
    layers = list(best.user_attrs["policy"]["layers"])
    prune, bits, rank, sparsity = fig.data
    assert list(prune.x) == layers
    assert list(prune.y) == [best.user_attrs["policy"]["layers"][f].get("prune", 0.0)
                             for f in layers]
    assert set(bits.y) == {8}  # uniform 8-bit policy (trial 0)
    assert all(v == 1.0 for v in rank.y if v is not None)  # rank fraction 1.0: dense
    assert set(sparsity.y) == {0.0}
    assert "trial 0" in fig.layout.title.text


def test_progress_curve_is_the_best_so_far(study: optuna.Study):
    fig = progress_figure(study, study.trials)
    best_so_far = fig.data[1]
    ys = list(best_so_far.y)
    assert ys == sorted(ys) and ys[-1] == max(t.user_attrs["metric"] for t in study.trials[:2])
    assert "4 trials" in fig.layout.title.text and "1 pruned" in fig.layout.title.text


def test_report_without_feasible_trials(digits_task, tmp_path: Path):
    study = build_study(tmp_path / "study.log", digits_task, [{"prune": 0.0}],
                        extra_pruned=False)
    page = write_report(study, tmp_path / "report.html").read_text()
    assert "No feasible trial" in page and "no feasible trial" in page
    for div_id in PLOT_IDS:
        assert f'id="{div_id}"' in page


def test_cli_report_regenerates_from_study_log(run_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "study.log", run / "study.log")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out
    for name in ("report.html", "trials.csv", "pareto.csv"):
        assert (run / name).is_file(), name
    df = pd.read_csv(run / "trials.csv")
    assert list(df["number"]) == [0, 1, 2, 3] and df["best"].tolist() == [True, False, False, False]
    assert sorted(pd.read_csv(run / "pareto.csv")["number"]) == [0, 1]
    page = (run / "report.html").read_text()
    assert all(f'id="{d}"' in page for d in PLOT_IDS)
    # the same tables as the library writes
    ref = tmp_path / "ref"
    write_tables(load_run_study(run_dir), ref)
    assert (ref / "trials.csv").read_text() == (run / "trials.csv").read_text()


@pytest.mark.parametrize("make", ["missing", "no_log"])
def test_cli_report_bad_folder_is_one_line_exit_2(tmp_path: Path, capsys, make: str):
    run = tmp_path / "nope"
    if make == "no_log":
        run.mkdir()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert ("does not exist" in err) and (str(run) in err.replace("\n", ""))
    assert ("study.log" in err)


def test_several_studies_need_a_name(tmp_path: Path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=storage)
    with pytest.raises(InputFileError, match=re.escape("holds 2 studies (a, b)")):
        load_run_study(tmp_path)
    assert load_run_study(tmp_path, "b").study_name == "b"
    with pytest.raises(InputFileError, match="study 'c' is not in"):
        load_run_study(tmp_path, "c")


def test_macs_budget_plots_against_macs(digits_task, tmp_path: Path):
    study = build_study(tmp_path / "study.log", digits_task, [{"prune": 0.5}, {"prune": 0.0}],
                        budget="macs<=70%", extra_pruned=False)
    fig = pareto_figure(study, study.trials, {}, pick_best(study))
    assert fig.layout.xaxis.title.text == "MACs" and "MACs" in fig.layout.title.text
    lines = [s.x0 for s in fig.layout.shapes if s.type == "line"]
    assert lines == [pytest.approx(0.7 * study.user_attrs["baseline"]["macs"])]
    star = next(t for t in fig.data if t.name == "uncompressed baseline")
    assert star.x[0] == study.user_attrs["baseline"]["macs"]
