"""Trial time on a GPU vs the CPU: apply + KD fine-tune + score of one candidate.

Two models, random weights and synthetic data (nothing is downloaded): torchvision's
``resnet50`` (224x224 images, 1000 classes) and a BERT-base-size encoder built from
``transformers.BertConfig()`` (12 layers, hidden 768, sequences of 128 tokens, 2 classes).
Each trial is :func:`autocompress.evaluate.compress_and_score` of one policy (prune 25%, 30%
sparsity and 8-bit weights wherever the model's default space has those knobs) at the default
fine-tune steps, as a search runs it: the teacher is on the device before the first trial (moved once per run), latency is not
part of a trial (it is timed on the CPU target either way).

Rows: the CPU (``--cpu-threads`` torch threads, default 2: the goal's 2-core CPU) and, when CUDA is there, the GPU at each
``--precisions`` with 1 and 2 trials at once (two threads, each on its own CUDA stream:
what two ``autocompress worker --device cuda:0`` processes share). Reported: seconds per
trial (apply, fine-tune, score), trials per hour, peak GPU memory per trial. The goal:
the GPU runs at least 20x the trials per hour of the 2-core CPU on resnet50.

Without a GPU the GPU rows are skipped and the table says they were not measured.
``--cpu-steps N`` times N fine-tune steps on the CPU and scales the fine-tune to the full
steps (marked in the table); ``--quick`` uses tiny models and data to check the script.

    .venv/bin/python benchmarks/gpu_finetune.py                      # full, on a GPU machine
    .venv/bin/python benchmarks/gpu_finetune.py --cpu-steps 3        # CPU rows extrapolated
    .venv/bin/python benchmarks/gpu_finetune.py --quick --out /tmp/q # seconds, any machine
    .venv/bin/python benchmarks/gpu_finetune.py table                # re-render the md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
NAME = "gpu_finetune"
GOAL_X = 20.0  # GPU trials per hour over the 2-core CPU's, on resnet50


@dataclass(frozen=True)
class Bench:
    """One model's benchmark settings (``quick`` shrinks every size).

    >>> BENCHES["resnet50"].batch, BENCHES["resnet50"].quick().image_size
    (32, 32)
    """

    model: str
    batch: int
    val_samples: int
    image_size: int = 224
    seq_len: int = 128
    tiny: bool = False

    def quick(self) -> Bench:
        return replace(self, batch=2, val_samples=4, image_size=32, seq_len=8, tiny=True)


BENCHES = {"resnet50": Bench("resnet50", batch=32, val_samples=512),
           "bert-base": Bench("bert-base", batch=32, val_samples=512)}


def build_task(bench: Bench) -> Any:
    """A :class:`~autocompress.tasks.Task` of ``bench``'s model on random data (seeded)."""
    from autocompress.tasks.base import Task, top1_accuracy

    gen = torch.Generator().manual_seed(0)
    n_train = bench.batch * 8
    torch.manual_seed(0)
    if bench.model == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None, num_classes=10 if bench.tiny else 1000)
        shape = (3, bench.image_size, bench.image_size)
        x = torch.randn(n_train + bench.val_samples, *shape, generator=gen)
        y = torch.randint(0, 10 if bench.tiny else 1000, (len(x),), generator=gen)
        train = TensorDataset(x[:n_train], y[:n_train])
        val = TensorDataset(x[n_train:], y[n_train:])
        example: Any = x[:1]
    else:
        from transformers import BertConfig, BertForSequenceClassification

        cfg = (BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, vocab_size=128) if bench.tiny else BertConfig())
        model = BertForSequenceClassification(cfg)
        ids = torch.randint(0, cfg.vocab_size, (n_train + bench.val_samples, bench.seq_len),
                            generator=gen)
        y = torch.randint(0, 2, (len(ids),), generator=gen)
        train = _Dicts(ids[:n_train], y[:n_train])
        val = _Dicts(ids[n_train:], y[n_train:])
        example = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    model.eval()
    return Task(name=f"bench:{bench.model}", model=model, example_input=example,
                train_loader=DataLoader(train, batch_size=bench.batch, shuffle=True),
                val_loader=DataLoader(val, batch_size=bench.batch), metric=top1_accuracy,
                target_batch_size=1)


class _Dicts(torch.utils.data.Dataset):
    """Token ids as the dict batches a Hugging Face classifier takes (labels included)."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


def bench_policy(task: Any) -> tuple[Any, Any]:
    """``(inventory, policy)``: prune 25%, 30% sparsity, 8-bit weights where the space has them."""
    from autocompress.inventory import build_inventory
    from autocompress.space import default_space

    inventory = build_inventory(task.model, task.example_input)
    space = default_space(task.name, inventory).resolve(inventory)
    return inventory, space.uniform_policy(prune=0.25, sparsity=0.3, bits=8)


def one_trial(task: Any, inventory: Any, policy: Any, settings: Any, teacher: Any,
              device: torch.device) -> dict[str, Any]:
    """Seconds of one trial (apply, fine-tune, score) and its peak GPU memory (MiB)."""
    from autocompress.device import peak_memory
    from autocompress.evaluate import compress_and_score

    with peak_memory(device) as mem:
        r = compress_and_score(task, policy, settings, inventory, teacher=teacher)
    return {"apply_s": r.apply_s, "finetune_s": r.finetune_s, "eval_s": r.eval_s,
            "trial_s": r.apply_s + r.finetune_s + r.eval_s, "peak_mib": mem["peak_mib"],
            "metric": r.metric}


def concurrent_trials(task: Any, inventory: Any, policy: Any, settings: Any, teacher: Any,
                      device: torch.device, n: int) -> dict[str, Any]:
    """``n`` trials at once on one GPU (threads, one CUDA stream each): wall time and memory."""
    from autocompress.device import peak_memory
    from autocompress.evaluate import compress_and_score

    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream(device)):
                compress_and_score(task, policy, settings, inventory, teacher=teacher)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    with peak_memory(device) as mem:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"wall_s": wall, "trial_s": wall / n, "peak_mib": mem["peak_mib"] / n}


def measure(bench: Bench, device: torch.device, precision: str, steps: int,
            timed_steps: int | None = None, concurrency: int = 1,
            cpu_threads: int = 2) -> dict[str, Any]:
    """One row: ``bench`` on ``device`` at ``precision``; ``timed_steps`` < ``steps`` scales
    the fine-tune's time to ``steps`` (the CPU's rows, when a full trial takes too long);
    ``cpu_threads``: torch threads of a CPU trial (the goal's 2-core CPU: 2)."""
    from autocompress.device import teacher_on
    from autocompress.evaluate import FinetuneSettings

    task = build_task(bench)
    inventory, policy = bench_policy(task)
    run_steps = timed_steps if timed_steps is not None and timed_steps < steps else steps
    threads = cpu_threads if device.type == "cpu" else 1
    settings = FinetuneSettings(steps=run_steps, val_samples=bench.val_samples, report_every=0,
                                threads=threads, device=str(device), precision=precision)
    teacher = teacher_on(task.model, device)  # once per run, as a search does
    if device.type == "cuda":  # CUDA context, cuDNN and allocator warm-up are not a trial's
        one_trial(task, inventory, policy, replace(settings, steps=2), teacher, device)
    row: dict[str, Any] = {"model": bench.model, "device": device.type, "precision": precision,
                           "concurrent": concurrency, "steps": steps, "timed_steps": run_steps,
                           "batch": bench.batch, "threads": threads}
    if concurrency == 1:
        r = one_trial(task, inventory, policy, settings, teacher, device)
        if run_steps < steps:
            r["finetune_s"] *= steps / run_steps
            r["trial_s"] = r["apply_s"] + r["finetune_s"] + r["eval_s"]
        row.update(r)
    else:
        row.update(concurrent_trials(task, inventory, policy, settings, teacher, device,
                                     concurrency))
    row["trials_per_hour"] = 3600.0 / row["trial_s"]
    return row


def cpu_name() -> str:
    """The CPU's model name and core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown report of ``rows`` (see the module docstring).

    >>> md = table([{"model": "resnet50", "device": "cpu", "precision": "fp32",
    ...   "concurrent": 1, "steps": 150, "timed_steps": 3, "trial_s": 100.0,
    ...   "trials_per_hour": 36.0, "apply_s": 1.0, "finetune_s": 90.0, "eval_s": 9.0,
    ...   "peak_mib": None}], {"cpu": "x", "gpu": None, "quick": False})
    >>> "GPU rows were not measured" in md and "36.0" in md
    True
    """
    quick = " (QUICK: tiny sizes)" if meta.get("quick") else ""
    lines = [f"# GPU fine-tunes: trial time, CPU vs GPU{quick}",
             "", f"CPU: {meta.get('cpu')}", f"GPU: {meta.get('gpu') or 'none'}"]
    if meta.get("loadavg_1m_start") is not None:  # a shared machine's load moves CPU numbers
        load = max(meta["loadavg_1m_start"], meta.get("loadavg_1m_end") or 0.0)
        lines.append(f"Load average (1 min) at start / end: {meta['loadavg_1m_start']:.2f} / "
                     f"{meta.get('loadavg_1m_end', float('nan')):.2f}")
        if load > (meta.get("cpus") or os.cpu_count() or 1):
            lines.append("The machine ran other jobs too (load above its core count): the CPU "
                         "rows are slower than on a quiet machine, which flatters the GPU's ratio.")
    lines.append("")
    if meta.get("quick"):
        lines += ["Quick mode: tiny models and data, to check the script; these numbers say "
                  "nothing about real trial times.", ""]
    if not meta.get("gpu"):
        lines += ["**GPU rows were not measured**: no CUDA GPU on the machine that ran this. "
                  "Run `benchmarks/gpu_finetune.py` on a GPU machine for them.", ""]
    lines += ["| model | device | precision | trials at once | steps | trial s | apply s | "
              "fine-tune s | score s | trials/hour | peak GPU MiB per trial |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = str(r["steps"])
        if r.get("timed_steps", r["steps"]) < r["steps"]:
            steps += f" (fine-tune scaled from {r['timed_steps']} timed)"
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        where = r["device"]
        if where == "cpu" and "threads" in r:
            where = f"cpu ({r['threads']} threads)"
        lines.append(f"| {r['model']} | {where} | {r['precision']} | {r['concurrent']} | "
                     f"{steps} | {r['trial_s']:.2f} | {_num(r, 'apply_s')} | "
                     f"{_num(r, 'finetune_s')} | {_num(r, 'eval_s')} | "
                     f"{r['trials_per_hour']:.1f} | {peak} |")
    lines += ["", goal_line(rows)]
    return "\n".join(lines) + "\n"


def _num(row: dict[str, Any], key: str) -> str:
    """``row[key]`` with 2 decimals, ``-`` when absent (two trials at once have no split)."""
    return f"{row[key]:.2f}" if row.get(key) is not None else "-"


def goal_line(rows: list[dict[str, Any]]) -> str:
    """``Goal ... met/not met/not measured`` for resnet50's best GPU rate over the CPU's."""
    cpu = [r["trials_per_hour"] for r in rows if r["model"] == "resnet50" and r["device"] == "cpu"]
    gpu = [r["trials_per_hour"] for r in rows if r["model"] == "resnet50" and r["device"] == "cuda"]
    head = f"Goal: resnet50 trials per hour on the GPU >= {GOAL_X:.0f}x the 2-core CPU's:"
    if not cpu or not gpu:
        return f"{head} **not measured** ({'no GPU rows' if not gpu else 'no CPU row'})."
    x = max(gpu) / max(cpu)
    return f"{head} {x:.1f}x, **{'met' if x >= GOAL_X else 'not met'}**."


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "table"])
    ap.add_argument("--models", default="resnet50,bert-base")
    ap.add_argument("--steps", type=int, default=None, help="default: FinetuneSettings().steps")
    ap.add_argument("--cpu-steps", type=int, default=None,
                    help="time this many fine-tune steps on the CPU and scale to --steps")
    ap.add_argument("--precisions", default="fp32,bf16", help="GPU rows")
    ap.add_argument("--cpu-threads", type=int, default=2, help="torch threads of a CPU trial")
    ap.add_argument("--no-cpu", action="store_true", help="GPU rows only")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    md, js = out / f"{NAME}.md", out / f"{NAME}.json"
    if args.command == "table":
        data = json.loads(js.read_text())
        md.write_text(table(data["rows"], data["meta"]))
        return
    from autocompress.evaluate import FinetuneSettings

    steps = args.steps or (3 if args.quick else FinetuneSettings().steps)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    meta = {"cpu": cpu_name(), "gpu": gpu, "quick": args.quick, "torch": torch.__version__,
            "steps": steps, "benches": {}, "loadavg_1m_start": os.getloadavg()[0]}
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        bench = BENCHES[name].quick() if args.quick else BENCHES[name]
        meta["benches"][name] = asdict(bench)
        if not args.no_cpu:
            rows.append(measure(bench, torch.device("cpu"), "fp32", steps, args.cpu_steps,
                                cpu_threads=args.cpu_threads))
            print(json.dumps(rows[-1]), flush=True)
        if gpu is None:
            continue
        for precision in args.precisions.split(","):
            for n in (1, 2):
                rows.append(measure(bench, torch.device("cuda", 0), precision, steps,
                                    concurrency=n))
                print(json.dumps(rows[-1]), flush=True)
    meta["loadavg_1m_end"] = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md.write_text(table(rows, meta))
    print(md.read_text())


if __name__ == "__main__":
    main()
