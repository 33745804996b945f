"""``autocompress inspect``: list the compressible layers of a task's model."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from autocompress.cli.app import TASK_HELP, OutputFormat, app, console
from autocompress.cli.common import task_and_inventory


@app.command()
def inspect(
    task: str = typer.Option("digits", "--task", "-t", help=TASK_HELP),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR tasks)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="state dict to load"),
    derived_space: bool = typer.Option(
        False, "--derived-space",
        help="print the search space derived from these layers (YAML for --space) instead"),
) -> None:
    """List every Conv2d/Linear layer: kind, shapes, MACs, params and pruning group (with its
    head count where the group is an attention's query, key and value, pruned by whole heads)."""
    _task, inventory = task_and_inventory(task, data_dir, checkpoint)
    if derived_space:
        from autocompress.derived_space import derive_space

        # Plain print: rich would read the YAML's [4, 8, 32] lists as markup.
        print(derive_space(inventory, _task.name).text, end="")
        return
    if format == OutputFormat.json:
        print(json.dumps(inventory.to_records(), indent=2))
        return
    table = Table(title=f"{task}: {len(inventory)} compressible layers", title_justify="left")
    for col in ("fqn", "kind", "in", "out", "kernel", "output", "MACs", "params", "group"):
        table.add_column(col, justify="right" if col in ("in", "out", "MACs", "params") else "left")
    for layer in inventory:
        table.add_row(
            layer.fqn, layer.kind, str(layer.in_channels), str(layer.out_channels),
            "x".join(map(str, layer.kernel_size)) if layer.kind != "Linear" else "",
            "x".join(map(str, layer.output_shape[1:])),
            f"{layer.macs:,}", f"{layer.params:,}",
            (layer.group or "") + (f" ({layer.heads} heads)" if layer.heads else "")
            if layer.prunable else "(not prunable)",
        )
    console.print(table)
    pct = 100 * sum(layer.macs for layer in inventory) / max(inventory.total_macs, 1)
    console.print(
        f"total: {inventory.total_macs:,} MACs ({pct:.1f}% in these layers), "
        f"{inventory.total_params:,} params, {len(inventory.groups)} pruning groups, "
        f"fingerprint {inventory.sha256[:12]}"
    )
    if inventory.pruning_error:
        console.print(
            f"[yellow]pruning is off for this model:[/] Torch-Pruning cannot trace it "
            f"({inventory.pruning_error}); rank, sparsity and bits still apply",
            markup=True, highlight=False,
        )
    if inventory.unsupported_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in inventory.unsupported_ops.items())
        console.print(f"[yellow]not counted by fvcore (not zero):[/] {ops}")
