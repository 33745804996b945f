"""Export of a real study (journal file) with real digits policies, models and ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from autocompress.cost import analytic_costs, measure_latency, parse_budget, parse_target
from autocompress.errors import PolicyError
from autocompress.evaluate import FinetuneSettings, compress_and_score
from autocompress.export import ExportSummary, export_results
from autocompress.inventory import build_inventory
from autocompress.pareto import VERIFIED_ATTR
from autocompress.policy import CompressionPolicy
from autocompress.runtime.onnx import run_onnx
from autocompress.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

TARGET = "ort-cpu-1t-b64"
BUDGET = "latency<=0.8x"
STEPS = 8  # fine-tune steps per trial: enough to change the weights, fast on 2 cores

# Policies as the search would suggest them (uniform knobs via the space's own snapping).
INT8_POLICIES: list[dict[str, Any]] = [
    {"prune": 0.5, "bits": 8},      # feasible, quantised: the best pick has bits <= 8
    {"prune": 0.75, "bits": 4},     # feasible, cheaper, less accurate
    {"prune": 0.0},                 # uncompressed: infeasible under 0.8x
]
FLOAT_POLICIES: list[dict[str, Any]] = [
    {"prune": 0.5},                 # float weights everywhere: no int8 file
    {"prune": 0.0, "rank_fraction": 0.5},
]


def build_study(
    path: Path,
    task: Any,
    policies: list[dict[str, Any]],
    budget: str = BUDGET,
    directions: tuple[str, ...] = ("maximize",),
    extra_pruned: bool = True,
) -> optuna.Study:
    """A study in a journal file as ``autocompress search`` writes it (the search contract).

    Every trial carries a real policy for the digits task, its analytic costs,
    a predicted latency (baseline latency scaled by MACs: test data, no LUT),
    the budget's constraints and, when feasible, the metric of the real
    compressed and fine-tuned model (the search's own ``compress_and_score``).
    """
    inventory = build_inventory(task.model, task.example_input)
    space = SearchSpace.embedded("digits").resolve(inventory)
    target = parse_target(TARGET)
    bud = parse_budget(budget)
    base_costs = analytic_costs(None, inventory)
    base_latency = measure_latency(task.model, task.example_input, target, runs=10).median_ms
    base = base_costs.with_latency(base_latency)
    settings = FinetuneSettings(steps=STEPS, seed=0, report_every=0, val_samples=200)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="autocompress", storage=storage,
                                directions=list(directions))
    study.set_user_attr("autocompress", {
        "version": "0.1.0", "task": "digits", "space": "embedded:digits", "budget": budget,
        "target": TARGET, "mode": "constrained" if len(directions) == 1 else "pareto",
        "strategy": "tpe", "seed": 0, "finetune_steps": STEPS, "trials": len(policies),
        "data_dir": None, "checkpoint": None, "finetune": settings.to_dict(),
    })
    study.set_user_attr("baseline", {
        "metric": task.baseline_metric, "metric_name": "accuracy", "higher_is_better": True,
        "latency_ms": base_latency, "macs": base_costs.macs, "params": base_costs.params,
        "size_bytes": base_costs.size_bytes, "bops": base_costs.bops,
    })
    study.set_user_attr("inventory_sha256", inventory.sha256)
    for knobs in policies:
        params = space.uniform_params(**knobs)
        policy = space.policy_from_params(params).with_fingerprint(inventory, "digits")
        # What the search adds to a filled proposal's policy (provenance.fill).
        policy = policy.model_copy(update={"provenance": {"fill": {"position": 1.0}}})
        costs = analytic_costs(policy, inventory)
        predicted = base_latency * costs.macs / base_costs.macs
        ok, violations = bud.check(costs.with_latency(predicted), base)
        metric = None
        if ok:
            metric = compress_and_score(task, policy, settings, inventory).metric
        value = metric if ok else 0.0
        values = [value] if len(directions) == 1 else [value, predicted]
        study.add_trial(create_trial(
            values=values,
            params=params,
            distributions={k: space.distributions[k] for k in params},
            user_attrs={
                "policy": policy.to_dict(), "feasible": ok, "violations": violations,
                "macs": costs.macs, "bops": costs.bops, "params": costs.params,
                "size_bytes": costs.size_bytes, "predicted_latency_ms": predicted,
                "metric": metric, "apply_s": 0.01, "finetune_s": 0.1 if ok else 0.0,
                "eval_s": 0.01, "cost_s": 0.001, "total_s": 0.2, "strategy": "tpe",
            },
            constraints=violations,
        ))
    if extra_pruned:
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={4: 0.3},
                                     user_attrs={"strategy": "tpe"}))
    return study


@pytest.fixture(scope="module")
def int8_run(digits_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8run")
    study = build_study(root / "study.log", digits_task, INT8_POLICIES)
    summary = export_results(study, digits_task, root, target=TARGET, budget=BUDGET)
    return study, summary, root


@pytest.fixture(scope="module")
def float_run(digits_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("floatrun")
    study = build_study(root / "study.log", digits_task, FLOAT_POLICIES, budget="macs<=70%",
                        extra_pruned=False)
    summary = export_results(study, digits_task, root, target=TARGET, budget="macs<=70%")
    return study, summary, root


def test_export_writes_every_file_and_key(int8_run):
    study, summary, root = int8_run
    for name in ("trials.csv", "pareto.csv", "best_policy.json", "model_best.pt",
                 "model_best.onnx", "model_best.int8.onnx", "report.html", "summary.json"):
        assert (root / name).is_file(), name
    data = json.loads((root / "summary.json").read_text())
    for key in ("best_metric", "metric_name", "budget", "predicted_latency_ms",
                "measured_latency_ms", "measured_latency_int8_ms", "baseline_latency_ms",
                "baseline_latency_study_ms", "speedup", "meets_budget", "best_trial",
                "n_trials", "n_feasible", "n_complete", "n_pruned"):
        assert key in data, key
    assert data["budget"] == BUDGET and data["metric_name"] == "accuracy"
    assert (data["n_trials"], data["n_complete"], data["n_feasible"], data["n_pruned"]) == (4, 3, 2, 1)
    assert data["best_trial"] == 0  # prune 0.5 / 8 bits beats prune 0.75 / 4 bits
    assert data["measured_latency_ms"] > 0 and data["baseline_latency_ms"] > 0
    assert data["speedup"] == pytest.approx(data["baseline_latency_ms"] / data["measured_latency_ms"])
    # an int8 file slower than model_best.onnx on the target is said so, and only then
    slower = any("runs slower than model_best.onnx" in n for n in data["notes"])
    assert slower == (data["speedup_int8"] < data["speedup"])
    # policies/: one per feasible COMPLETE trial (both are on the front too)
    assert sorted(p.name for p in (root / "policies").iterdir()) == ["trial_0.json", "trial_1.json"]


def test_export_reproduces_the_trial_metric(int8_run):
    """Rebuilt with the study's fine-tune settings and seed, the model scores what the trial did."""
    study, summary, _root = int8_run
    trial = study.trials[summary.best_trial]
    assert summary.finetuned and summary.finetune_steps == STEPS
    assert summary.best_metric == pytest.approx(trial.user_attrs["metric"], abs=1e-9)
    assert summary.trial_metric == trial.user_attrs["metric"]


def test_best_policy_loads_strictly_and_matches_the_trial(int8_run, digits_task):
    study, summary, root = int8_run
    inventory = build_inventory(digits_task.model, digits_task.example_input)
    policy = CompressionPolicy.load(root / "best_policy.json", inventory)
    trial = study.trials[summary.best_trial]
    assert policy.layers == CompressionPolicy.from_dict(trial.user_attrs["policy"]).layers
    assert policy.model == {"inventory_sha256": inventory.sha256, "task": "digits"}
    assert policy.budget["text"] == BUDGET and policy.budget["target"] == TARGET
    m = policy.metrics
    assert m["measured_latency_ms"] == summary.measured_latency_ms
    assert m["macs"] == analytic_costs(policy, inventory).macs == trial.user_attrs["macs"]
    assert m["size_bytes"] == trial.user_attrs["size_bytes"]
    assert m["predicted_latency_ms"] == trial.user_attrs["predicted_latency_ms"]
    prov = policy.provenance
    assert (prov["study"], prov["trial"], prov["backend"], prov["seed"]) == (
        "autocompress", summary.best_trial, "optuna", 0)
    assert prov["torch"] == torch.__version__ and prov["autocompress"]
    assert prov["fill"] == {"position": 1.0}  # the trial's own provenance is kept
    assert prov["finetune"]["steps"] == STEPS


def test_policy_from_another_model_is_rejected(int8_run, digits_mlp_task):
    _study, _summary, root = int8_run
    inv = build_inventory(digits_mlp_task.model, digits_mlp_task.example_input)
    with pytest.raises(PolicyError, match="different model"):
        CompressionPolicy.load(root / "best_policy.json", inv)


def test_exported_models_run_and_agree(int8_run, digits_task):
    _study, summary, root = int8_run
    x = next(iter(digits_task.val_loader))[0][:64]
    model = torch.load(root / "model_best.pt", weights_only=False)
    with torch.no_grad():
        ref = model(x).numpy()
    fp32 = run_onnx(root / "model_best.onnx", x.numpy())
    assert np.abs(fp32 - ref).max() < 1e-3
    int8 = run_onnx(root / "model_best.int8.onnx", x.numpy())
    assert int8.shape == ref.shape
    # int8 QDQ keeps the predictions of an 8-bit-weight model nearly intact
    assert (int8.argmax(1) == ref.argmax(1)).mean() > 0.9
    assert summary.int8_metric is not None and summary.int8_metric > 0.8
    assert summary.measured_latency_int8_ms is not None and summary.measured_latency_int8_ms > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(root / "model_best.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_no_int8_file_without_low_bits(float_run):
    _study, summary, root = float_run
    assert (root / "model_best.onnx").is_file()
    assert not (root / "model_best.int8.onnx").exists()
    assert summary.measured_latency_int8_ms is None and "model_int8_onnx" not in summary.files
    # macs budget: met by analytic MACs, checked again at export
    assert summary.meets_budget and summary.violations["macs"] <= 0


def test_a_pick_that_misses_when_timed_again_is_not_exported(digits_task, tmp_path: Path):
    """Feasible in the study, but 1 us is impossible: timed again before the export, the pick
    misses, and with no other trial there is no pick, said so."""
    study = build_study(tmp_path / "study.log", digits_task, INT8_POLICIES[:1], extra_pruned=False)
    assert study.trials[0].user_attrs["feasible"]
    summary = export_results(study, digits_task, tmp_path / "out", target=TARGET,
                             budget="latency<=1us", finetune=0)
    assert summary.best_trial is None and summary.meets_budget is False
    assert summary.notes[0].startswith("trial 0 (") and "misses 'latency<=1us'" in summary.notes[0]
    verdict = study.user_attrs[VERIFIED_ATTR]["trials"]["0"]
    assert verdict["meets"] is False and verdict["measured_ms"] > 0.001
    assert not (tmp_path / "out" / "model_best.onnx").exists()
    page = (tmp_path / "out" / "report.html").read_text()
    headline = page[page.index('id="summary"'):page.index('id="summary-all"')]
    assert "when timed again" in headline  # the note is shown with the headline numbers


def test_meets_budget_uses_the_fresh_measurement(digits_task, tmp_path: Path):
    """A pick confirmed on the target before (as ``autocompress verify`` leaves it), but 1 us
    is impossible on the re-measured model: the export's own measurement decides."""
    study = build_study(tmp_path / "study.log", digits_task, INT8_POLICIES[:1], extra_pruned=False)
    assert study.trials[0].user_attrs["feasible"]
    name = parse_target(TARGET).with_batch(digits_task.target_batch_size).name
    study.set_user_attr(VERIFIED_ATTR, {"target": name, "trials": {"0": {"meets": True}}})
    out = tmp_path / "tight"
    summary = export_results(study, digits_task, out, target=TARGET, budget="latency<=1us",
                             finetune=0)
    assert summary.best_trial == 0 and summary.meets_budget is False
    assert summary.meets_budget_basis == "measured"
    assert summary.violations["latency"] == pytest.approx(summary.measured_latency_ms / 0.001 - 1)
    assert summary.budget_limits == {"latency": pytest.approx(0.001)}
    assert summary.budget_limits_study == {"latency": pytest.approx(0.001)}  # absolute: same
    assert json.loads((out / "summary.json").read_text())["meets_budget"] is False
    assert not summary.finetuned and summary.finetune_steps == 0


def test_no_feasible_trial_writes_null_best(digits_task, tmp_path: Path):
    study = build_study(tmp_path / "study.log", digits_task, [{"prune": 0.0}])
    summary = export_results(study, digits_task, tmp_path, target=TARGET, budget=BUDGET)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["best_trial"] is None and data["best_metric"] is None
    assert data["meets_budget"] is False and data["n_feasible"] == 0
    assert (tmp_path / "trials.csv").is_file() and (tmp_path / "report.html").is_file()
    assert not (tmp_path / "best_policy.json").exists()
    assert not (tmp_path / "model_best.onnx").exists()
    assert summary.notes and "no trial met the budget" in summary.notes[0]
    assert ExportSummary.read(tmp_path / "summary.json") == summary


def test_trials_csv_flattens_user_attrs(int8_run):
    study, summary, root = int8_run
    df = pd.read_csv(root / "trials.csv")
    assert list(df["number"]) == [0, 1, 2, 3]
    assert list(df["state"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    for col in ("value", "macs", "bops", "params", "size_bytes", "predicted_latency_ms",
                "metric", "feasible", "violations.latency", "constraints_latency",
                "finetune_s", "total_s", "strategy", "params_features.2/prune", "policy",
                "feasible_complete", "pareto", "best"):
        assert col in df.columns, col
    assert list(df["feasible_complete"]) == [True, True, False, False]
    assert df.loc[df["best"], "number"].tolist() == [summary.best_trial]
    assert df.loc[2, "violations.latency"] > 0
    # the policy column is the exact policy JSON
    policy = CompressionPolicy.from_json(df.loc[0, "policy"])
    assert policy.layers == CompressionPolicy.from_dict(study.trials[0].user_attrs["policy"]).layers
    pareto = pd.read_csv(root / "pareto.csv")
    assert sorted(pareto["number"]) == [0, 1]
    assert pareto["predicted_latency_ms"].is_monotonic_increasing


def test_pareto_mode_without_measurement(digits_task, tmp_path: Path):
    """Two objectives (metric, latency): the pick is the best metric on Optuna's front;
    with measure=False, meets_budget rests on the predicted latency and says so."""
    study = build_study(tmp_path / "study.log", digits_task, FLOAT_POLICIES + INT8_POLICIES[:2],
                        directions=("maximize", "minimize"), extra_pruned=False)
    summary = export_results(study, digits_task, tmp_path / "out", target=TARGET, budget=BUDGET,
                             measure=False, finetune=0)
    front = {t.number for t in study.best_trials}
    feasible = [t for t in study.trials if t.user_attrs["feasible"]]
    best = max(feasible, key=lambda t: (t.user_attrs["metric"], -t.user_attrs["predicted_latency_ms"]))
    assert summary.best_trial == best.number and best.number in front
    assert summary.measured_latency_ms is None and summary.baseline_latency_ms is None
    assert summary.meets_budget_basis == "predicted"
    assert summary.meets_budget is True  # predicted feasible under the study's own baseline
    assert set(pd.read_csv(tmp_path / "out" / "pareto.csv")["number"]) == front


def test_autocompress_apply_reproduces_the_exported_costs(int8_run, tmp_path: Path, capsys):
    """`autocompress apply` of best_policy.json builds the model with the summary's costs."""
    from autocompress.cli.app import main

    _study, summary, root = int8_run
    code = main(["apply", "--policy", str(root / "best_policy.json"), "--out",
                 str(tmp_path / "applied"), "--format", "json"])
    assert code == 0
    after = json.loads(capsys.readouterr().out)["after"]
    assert (after["macs"], after["params"], after["size_bytes"]) == (
        summary.macs, summary.params, summary.size_bytes)
    # and the same structure as the exported model (apply does not fine-tune: weights differ)
    exported = torch.load(root / "model_best.pt", weights_only=False)
    applied = torch.load(tmp_path / "applied" / "model.pt", weights_only=False)
    assert [p.shape for p in exported.parameters()] == [p.shape for p in applied.parameters()]


def test_a_transformer_with_fused_attention_exports_and_agrees():
    """nn.MultiheadAttention's eval-mode fast path has no ONNX export; the export takes the
    plain path, which computes the same outputs."""
    import numpy as np
    from torchvision.models.vision_transformer import VisionTransformer

    from autocompress.runtime.onnx import export_onnx, onnx_agreement

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                              hidden_dim=32, mlp_dim=64).eval()
    x = torch.randn(2, 3, 32, 32)
    got, ref = onnx_agreement(model, export_onnx(model, x[:1]), x)
    assert float(np.abs(got - ref).max()) < 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert torch.backends.mha.get_fastpath_enabled()  # the global switch is restored


def test_a_model_the_torchscript_exporter_rejects_is_exported_by_torch_export():
    """AlexNet below 224 pixels pools a 1x1 map up to 6x6, which the TorchScript exporter
    refuses; the torch.export-based exporter decomposes it, and ONNX Runtime agrees."""
    import numpy as np
    import torchvision

    from autocompress.runtime.onnx import export_onnx, run_onnx

    model = torchvision.models.alexnet(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    data = export_onnx(model, x[:1])
    got = run_onnx(data, x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (2, 10) and np.abs(got - ref).max() < 1e-4


def test_a_model_past_the_protobuf_limit_keeps_its_weights_beside_the_graph(
        monkeypatch, tmp_path: Path):
    """Past protobuf's 2 GiB a graph cannot be bytes; here the limit is lowered so a small
    model takes that path: one weights file beside the graph, which ONNX Runtime finds, and
    a temporary export that is removed with its handle."""
    import gc

    from torch import nn

    import autocompress.runtime.onnx as onnx_runtime

    monkeypatch.setattr(onnx_runtime, "EXTERNAL_DATA_BYTES", 1000)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    path = tmp_path / "model_best.onnx"
    for _ in range(2):  # a second export replaces the weights, it does not append to them
        exported = onnx_runtime.export_onnx(model, x[:1], path)
    assert isinstance(exported, onnx_runtime.OnnxFile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_best.onnx",
                                                          "model_best.onnx.data"]
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "model_best.onnx").stat().st_size < weights / 10
    assert weights <= onnx_runtime.onnx_nbytes(exported) < 1.2 * weights
    assert np.abs(run_onnx(path, x.numpy()) - ref).max() < 1e-5

    temporary = onnx_runtime.export_onnx(model, x[:1])
    assert isinstance(temporary, onnx_runtime.OnnxFile)
    assert np.abs(run_onnx(temporary, x.numpy()) - ref).max() < 1e-5
    folder = temporary.path.parent
    del temporary
    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize("conv", [False, True], ids=["dynamic", "static"])
def test_int8_export_of_a_model_past_the_protobuf_limit(monkeypatch, tmp_path: Path, conv):
    """The int8 file of a model whose float graph needs external data is quantised with its
    weights kept beside it, statically and dynamically, and ONNX Runtime runs it."""
    from torch import nn

    import autocompress.runtime.onnx as onnx_runtime
    from autocompress.export.int8 import export_int8

    monkeypatch.setattr(onnx_runtime, "EXTERNAL_DATA_BYTES", 1000)
    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(16 * 6 * 6, 10)).eval()
        x = torch.randn(4, 3, 8, 8)
    else:
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
        x = torch.randn(4, 64)
    out = export_int8(model, x[:1], tmp_path / "model_best.int8.onnx", [x[:2], x[2:]])
    got = run_onnx(out, x.numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    assert (tmp_path / "model_best.int8.onnx.data").is_file()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
