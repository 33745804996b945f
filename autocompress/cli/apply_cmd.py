"""``autocompress apply``: apply a policy file to a task's model, export it and report the gain.

Writes ``DIR/model.pt`` (the whole module, since its architecture changed:
load it with ``torch.load(path, weights_only=False)``), ``DIR/model.onnx`` and
``DIR/policy.json``; checks that ONNX Runtime agrees with PyTorch; reports
MACs, params, size_bytes and the task metric before and after.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.table import Table
from torch import nn

from autocompress.cli.app import TASK_HELP, OutputFormat, app, console, err_console
from autocompress.cli.common import check_out_folder, task_and_inventory
from autocompress.errors import MethodError
from autocompress.methods import apply_policy, model_stats
from autocompress.policy import CompressionPolicy
from autocompress.runtime.onnx import OnnxModel, export_onnx
from autocompress.tasks import Task

# Relative to the largest |output|. With 8-bit activations ONNX Runtime runs the layers as
# integer kernels that re-quantise their outputs, so a value on a rounding edge can move by
# one step and a few such steps add up.
FLOAT_TOLERANCE = 1e-4
INT8_TOLERANCE = 2e-2


def _calibration(task: Task, batches: int) -> list[Any] | None:
    """The first ``batches`` training batches' inputs, in any input form (None: the example)."""
    from autocompress import inputs

    if batches <= 0 or task.train_loader is None:
        return None
    out = []
    for i, batch in enumerate(task.train_loader):
        if i >= batches:
            break
        out.append(inputs.split_batch(batch)[0])
    return out or None


def onnx_max_abs_diff(model: nn.Module, onnx_model: OnnxModel, x: Any,
                      output: Any = None) -> tuple[float, float]:
    """``(max |ORT - PyTorch|, max |PyTorch|)`` of the scored output on input ``x``."""
    from autocompress.runtime.onnx import onnx_agreement

    got, ref = onnx_agreement(model, onnx_model, x, output)
    return float(np.abs(got - ref).max()), float(np.abs(ref).max())


def _metrics(task: Task, model: nn.Module, stats: dict[str, Any]) -> dict[str, Any]:
    # a user task without validation data has no metric: reported as null, not an error
    value = task.evaluate(model) if task.val_loader is not None else None
    out = dict(stats)
    out["accuracy"] = value  # the report key; the task metric under its own name too
    if task.metric_name != "accuracy":
        out[task.metric_name] = value
    return out


def _ratio(before: Any, after: Any) -> str:
    if not isinstance(before, (int, float)) or not before:
        return ""
    return f"{after / before:.3f}x"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@app.command()
def apply(
    policy: Path = typer.Option(..., "--policy", "-p", help="policy JSON file"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="folder for model.pt, model.onnx, policy.json"
    ),
    task: str = typer.Option("digits", "--task", "-t", help=TASK_HELP),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR tasks)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="state dict to load"),
    calibration_batches: int = typer.Option(
        4, "--calibration-batches", min=0,
        help="training batches that calibrate 8-bit activations (0: the example input)",
    ),
) -> None:
    """Apply a policy file: write the compressed model (.pt, .onnx) and report before/after.

    model.pt holds the whole module (its architecture changed); load it with
    torch.load("DIR/model.pt", weights_only=False).
    """
    # Cheap checks first (file, JSON, value ranges), before the task loads; then the layers.
    check_out_folder(out)
    the_policy = CompressionPolicy.load(policy)
    the_task, inventory = task_and_inventory(task, data_dir, checkpoint)
    the_policy.validate_against(inventory, source=f"policy {str(policy)!r}")

    with err_console.status("applying policy ..."), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = apply_policy(
            the_task.model, the_policy, the_task.example_input, inventory,
            calibration=_calibration(the_task, calibration_batches),
        )
    notes = [str(w.message) for w in caught if w.category.__module__.startswith("autocompress")]
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)

    with err_console.status("exporting and evaluating ..."):
        out.mkdir(parents=True, exist_ok=True)
        torch.save(small, out / "model.pt")
        the_policy.save(out / "policy.json")
        exported = export_onnx(small, the_task.example_input, out / "model.onnx")
        diff, scale = onnx_max_abs_diff(small, exported, the_task.validation_batch(),
                                        the_task.output)
        if not math.isfinite(diff):
            raise MethodError("the exported ONNX model gives non-finite outputs in ONNX Runtime")
        x = the_task.example_input
        before = _metrics(the_task, the_task.model, model_stats(the_task.model, x))
        after = _metrics(the_task, small, model_stats(small, x, the_policy))
    int8 = any(lp.act_bits == 8 for lp in the_policy.layers.values())
    agrees = diff <= (INT8_TOLERANCE * scale if int8 else FLOAT_TOLERANCE * max(1.0, scale))
    if not agrees:
        hint = (
            "; ONNX Runtime's uint8 x int8 kernels can saturate with 8-bit weights on CPUs "
            "without VNNI: 7 bits or fewer avoid it" if int8 else ""
        )
        err_console.print(
            f"[yellow]warning:[/] ONNX Runtime differs from PyTorch by up to {diff:.3g} "
            f"(outputs up to {scale:.3g}){hint}", highlight=False, soft_wrap=True,
        )

    report = {
        "before": before,
        "after": after,
        "task": the_task.name,
        "metric_name": the_task.metric_name,
        "onnx_max_abs_diff": diff,
        "onnx_agrees": agrees,
        "files": {k: str(out / f"model.{k}") for k in ("pt", "onnx")} | {
            "policy": str(out / "policy.json")
        },
        "warnings": notes,
    }
    if format == OutputFormat.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"{the_task.name}: policy {policy.name}", title_justify="left")
    for col in ("", "before", "after", "after/before"):
        table.add_column(col, justify="left" if not col else "right")
    for key in before:
        table.add_row(key, _fmt(before[key]), _fmt(after[key]), _ratio(before[key], after[key]))
    console.print(table)
    console.print(
        f"wrote {out / 'model.pt'} (torch.load(..., weights_only=False)), {out / 'model.onnx'} "
        f"(ONNX Runtime max |diff| vs PyTorch {diff:.2e}), {out / 'policy.json'}"
    )
