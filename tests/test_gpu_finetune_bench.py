"""benchmarks/gpu_finetune.py: the table, the goal line, and a quick run on any machine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():  # the benchmark is a script, not a package module
    spec = importlib.util.spec_from_file_location("gpu_finetune",
                                                  ROOT / "benchmarks" / "gpu_finetune.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_finetune"] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(device: str, tph: float, **kw):
    row = {"model": "resnet50", "device": device, "precision": "fp32", "concurrent": 1,
           "steps": 150, "timed_steps": 150, "trial_s": 3600 / tph, "trials_per_hour": tph,
           "apply_s": 1.0, "finetune_s": 2.0, "eval_s": 0.5, "peak_mib": None}
    row.update(kw)
    return row


def test_table_names_the_machines_and_judges_the_goal() -> None:
    g = _bench()
    meta = {"cpu": "AMD EPYC, 2 cores", "gpu": "NVIDIA H100", "quick": False}
    rows = [_row("cpu", 10.0, timed_steps=3),
            _row("cuda", 150.0, peak_mib=2048.0), _row("cuda", 250.0, concurrent=2)]
    md = g.table(rows, meta)
    assert "CPU: AMD EPYC, 2 cores" in md and "GPU: NVIDIA H100" in md
    assert "150 (fine-tune scaled from 3 timed)" in md and "| 2048 |" in md
    assert md.rstrip().endswith("25.0x, **met**.")
    assert "not met" in g.goal_line([_row("cpu", 10.0), _row("cuda", 100.0)])
    cpu_only = g.table(rows[:1], {**meta, "gpu": None})
    assert "GPU rows were not measured" in cpu_only and "**not measured** (no GPU rows)" in cpu_only


def test_quick_run_writes_both_files(tmp_path) -> None:
    g = _bench()
    g.main(["--quick", "--models", "bert-base", "--out", str(tmp_path), "--precisions", "bf16",
            "--cpu-threads", "2"])
    data = json.loads((tmp_path / "gpu_finetune.json").read_text())
    assert data["meta"]["quick"] and data["rows"][0]["device"] == "cpu"
    assert all(r["trial_s"] > 0 and r["trials_per_hour"] > 0 for r in data["rows"])
    md = (tmp_path / "gpu_finetune.md").read_text()
    assert "QUICK" in md and "| bert-base | cpu (2 threads) | fp32 | 1 | 3 |" in md
    if not torch.cuda.is_available():
        assert "GPU rows were not measured" in md


@pytest.mark.slow
def test_quick_run_resnet50_cpu_rows_scaled(tmp_path) -> None:
    g = _bench()
    g.main(["--quick", "--models", "resnet50", "--out", str(tmp_path), "--steps", "4",
            "--cpu-steps", "2"])
    row = json.loads((tmp_path / "gpu_finetune.json").read_text())["rows"][0]
    assert (row["steps"], row["timed_steps"]) == (4, 2)
