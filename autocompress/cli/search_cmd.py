"""``autocompress search``: search a per-layer compression policy under a budget (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from autocompress.cli.app import TASK_HELP, app, console, err_console
from autocompress.errors import InputFileError


@app.command()
def search(
    task: str = typer.Option(None, "--task", "-t", help=TASK_HELP + " (default: digits)"),
    space: str = typer.Option(
        None, "--space", "-s",
        help="search space YAML (or embedded:<name>); default: the task's embedded space"),
    budget: str = typer.Option(
        None, "--budget", "-b",
        help='e.g. "latency<=0.5x", "macs<=40%", "size<=1.5MB" (commas join) '
             "(default: latency<=0.5x)"),
    target: str = typer.Option(
        None, "--target", help="where latency is measured: ort|torch\\[-<N>t]\\[-b<B>] (default: ort "
        "at the task's target batch)"),
    trials: int = typer.Option(None, "--trials", "-n",
                               help="total trials wanted; a resumed run counts finished ones "
                                    "(default: 30)"),
    out: str = typer.Option(None, "--out", "-o",
                            help="results folder (holds study.log) (default: results/<task>)"),
    strategy: str = typer.Option(None, "--strategy",
                                 help="tpe|nsga2|random|uniform|greedy (default: tpe)"),
    mode: str = typer.Option(None, "--mode", help="constrained|pareto (default: constrained)"),
    seed: int = typer.Option(None, "--seed", help="(default: 0)"),
    warm_start: str = typer.Option(
        None, "--warm-start", help="refined|uniform|none: tpe/nsga2 start from the "
        "least-compressing uniform policy predicted to meet the budget; refined: then from it "
        "with the budget's room given to the layers it hurts most (default: refined)"),
    fill_budget: bool = typer.Option(
        None, "--fill-budget/--no-fill-budget", help="tpe, constrained: move each proposal to "
        "the budget's edge before it is trained (default: fill)"),
    measure: bool = typer.Option(
        None, "--measure/--no-measure", help="latency budgets: time each candidate on the "
        "target before its fine-tune and judge the budget on that; --no-measure: predictions "
        "decide, for a search away from the target (default: measure)"),
    lut: str = typer.Option(
        None, "--lut", help="search away from the target: a latency table profiled there "
        "(`autocompress profile --out`); latency is judged on its predictions only, and "
        "`autocompress verify RUN` measures the results on the target"),
    distill: str = typer.Option(
        None, "--distill", help="auto|kl|mse|cosine: the fine-tune's distillation loss (auto: "
        "the task's own, else KL on class scores and MSE on other outputs) (default: auto)"),
    device: str = typer.Option(
        None, "--device", help="auto|cpu|cuda|cuda:N: where fine-tunes and scoring run; latency "
        "is still timed on the CPU target (auto: CUDA if any) (default: cpu)"),
    precision: str = typer.Option(
        None, "--precision", help="fp32|bf16|fp16: autocast of the fine-tune (fp16: CUDA only) "
        "(default: fp32)"),
    gpus_per_trial: float = typer.Option(
        None, "--gpus-per-trial", help="with --backend ray: GPUs each trial holds (0.5: two "
        "trials per GPU) (default: 0)"),
    finetune_steps: int = typer.Option(None, "--finetune-steps",
                                       help="KD fine-tune steps per trial (default: 150)"),
    config: str = typer.Option(None, "--config", "-c",
                               help="YAML file with these settings (flags override it)"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR tasks)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="state dict to load"),
    storage: str = typer.Option(None, "--storage",
                                help="Optuna storage URL or journal file path "
                                     "(default: <out>/study.log)"),
    study_name: str = typer.Option(None, "--study-name", help="(default: autocompress)"),
    export: bool = typer.Option(None, "--export/--no-export",
                                help="write the results folder at the end (default: export)"),
    backend: str = typer.Option(None, "--backend",
                                help="optuna|ray: trials in this process, or as Ray Tune trials "
                                     "(OptunaSearch + ASHA) (default: optuna)"),
    ray_address: str = typer.Option(None, "--ray-address",
                                    help="with --backend ray: auto or host:port of a running "
                                         "cluster (default: a local Ray runtime)"),
) -> None:
    """Search per-layer prune/rank/sparsity/bits under a budget; resumes from <out>/study.log.

    Exit codes: 0 a policy meets the budget, 3 no trial met it, 2 bad input.
    """
    from autocompress.cli.common import check_out_folder, check_storage
    from autocompress.engine.api import run
    from autocompress.engine.config import SearchConfig

    cfg = SearchConfig.build(config, {
        "task": task, "space": space, "budget": budget, "target": target, "trials": trials,
        "out": out, "strategy": strategy, "mode": mode, "seed": seed, "warm_start": warm_start,
        "fill_budget": fill_budget, "measure": measure, "lut": lut, "distill": distill,
        "finetune_steps": finetune_steps, "data_dir": data_dir, "checkpoint": checkpoint,
        "storage": storage, "study_name": study_name, "export": export,
        "backend": backend, "ray_address": ray_address, "device": device,
        "precision": precision, "gpus_per_trial": gpus_per_trial,
    })
    # Checked here because the run creates its folder only after loading (maybe training) the task.
    check_out_folder(cfg.out_dir, "--out" if out is not None else "out")
    check_storage(cfg.storage, "--storage" if storage is not None else "storage")
    if cfg.lut is not None and not Path(cfg.lut).is_file():
        raise InputFileError(
            f"--lut {cfg.lut!r} does not exist; expected a latency table profiled on the target "
            f"with `autocompress profile --task {cfg.task} --target {cfg.target} --out FILE`")

    def say(msg: str) -> None:
        err_console.print(msg, highlight=False, soft_wrap=True, markup=False)

    result = run(cfg, progress=True, log=say)
    s = result.summary
    for note in getattr(s, "notes", None) or []:  # what changes how the result reads
        say(f"note: {note}")
    if result.best_trial is None:
        console.print(
            f"no trial met the budget {cfg.budget!r} ({len(result.trials)} trials); "
            f"results in {result.out}", highlight=False)
        raise typer.Exit(result.exit_status)
    line = (f"best trial {result.best_trial}: {result.config.task} "
            f"metric {result.best_metric:.4f}")
    if s is not None:
        pred = getattr(s, "predicted_latency_ms", None)
        meas = getattr(s, "measured_latency_ms", None)
        base = getattr(s, "baseline_latency_ms", None)
        if meas is not None:
            line += f", latency {meas:.4g} ms measured"
            if pred is not None:
                line += f" ({pred:.4g} predicted)"
            if base:
                line += f" vs {base:.4g} ms uncompressed"
        elif pred is not None:
            line += (f", latency {pred:.4g} ms predicted by {cfg.lut} (not measured here: run "
                     f"`autocompress verify {result.out}` on the target)")
        if getattr(s, "meets_budget", None) is False:
            line += " - MISSES the budget when re-measured"
    console.print(line, highlight=False)
    console.print(f"results in {result.out} ({result.seconds:.0f} s)", highlight=False)
    raise typer.Exit(result.exit_status)
