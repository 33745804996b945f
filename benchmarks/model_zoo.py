"""Model zoo: does every torchvision classifier and four Hugging Face families go through
autocompress end to end?

Each model runs, in its own subprocess with a timeout and a memory cap, through the stages
of :data:`STAGES`: build the task (random weights, synthetic inputs labelled by the model
itself) → ``inspect`` (:func:`~autocompress.inventory.build_inventory`) → ``space`` (the
task's default space: ``torchvision_cnn`` for torchvision tasks, one derived from the layers
for the others) → ``apply`` (one random policy of that space) → ``export`` (ONNX) →
``onnx_match`` (ONNX Runtime agrees with PyTorch on the compressed model) → ``search`` (two
trials under ``macs<=80%`` on ``torch-1t-b1``). A row records the furthest stage reached,
the error there, the seconds of each stage and the peak RSS.

    PYTHONPATH=. .venv/bin/python benchmarks/model_zoo.py                  # all, ~35 min cap
    PYTHONPATH=. .venv/bin/python benchmarks/model_zoo.py --models resnet18 hf:bert

Writes ``benchmarks/results/model_zoo.md`` and ``.json``. Torchvision models above
``--max-params`` parameters are skipped (listed in the md); ``--budget-s`` stops starting
new models after that many seconds, and the models not reached are listed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STAGES = ["build", "inspect", "space", "apply", "export", "onnx_match", "search"]
HF_FAMILIES = ["hf:bert", "hf:distilbert", "hf:roberta", "hf:vit"]
IMAGE_SIZES = [64, 96, 128, 160, 224, 299]  # tried in order; the first that runs is used
FIXED_SIZE = {"vit_": 224, "maxvit_t": 224, "swin": 224}  # models built for one input size
SEQ_LEN = {"base": 32, "tiny": 8}
# Fine-tune batch of the HF tasks: ViT-base's backward over 197 tokens at 16 rows passes the cap.
HF_BATCH = {"hf:vit": 8}
TOLERANCE = 1e-3  # ONNX Runtime vs PyTorch: max |diff| relative to max |PyTorch output|
TOLERANCE_ACT8 = 5e-2  # with 8-bit activations rounding may flip a step in either runtime
MAX_PARAMS = 150e6
TIMEOUT_S = 300.0
MEMORY_CAP_GB = 6.0
GOAL_SHARE = 0.95

# ---------------------------------------------------------------- tasks
def _agreement(reference: Any) -> Any:
    """A metric: share of rows whose top-1 class of the scored output matches ``reference``'s."""
    import torch

    from autocompress import inputs

    reference = reference.eval()

    @torch.no_grad()
    def agreement(model: Any, loader: Any) -> float:
        was_training = model.training
        model.eval()
        same = total = 0
        for batch in loader:
            x, _ = inputs.split_batch(batch)
            got = inputs.select_output(inputs.call(model, x), "logits").argmax(-1)
            ref = inputs.select_output(inputs.call(reference, x), "logits").argmax(-1)
            same += int((got == ref).sum())
            total += int(got.numel())
        model.train(was_training)
        return same / max(total, 1)

    return agreement


def hf_model(family: str, size: str) -> tuple[Any, Any]:
    """``(model, example_input)`` of a Hugging Face family (``hf:bert``, ...) from its config:
    ``base`` is the library's default config, ``tiny`` two layers of width 32.

    >>> model, x = hf_model("hf:distilbert", "tiny")
    >>> type(model).__name__, sorted(x)
    ('DistilBertForSequenceClassification', ['attention_mask', 'input_ids'])
    """
    import torch
    import transformers

    tf: Any = transformers  # the config classes take their fields as keyword arguments
    name = family.split(":", 1)[1]
    tiny = size == "tiny"
    torch.manual_seed(0)
    if name == "vit":
        kw: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=32, patch_size=8) if tiny else {}
        config = tf.ViTConfig(num_labels=10, **kw)
        model = tf.ViTForImageClassification(config)
        x = {"pixel_values": torch.randn(1, 3, config.image_size, config.image_size,
                                         generator=torch.Generator().manual_seed(1))}
        return model.eval(), x
    configs = {"bert": tf.BertConfig, "distilbert": tf.DistilBertConfig,
               "roberta": tf.RobertaConfig}
    models = {"bert": tf.BertForSequenceClassification,
              "distilbert": tf.DistilBertForSequenceClassification,
              "roberta": tf.RobertaForSequenceClassification}
    if name not in configs:
        raise ValueError(f"unknown Hugging Face family {family!r}; expected one of "
                         f"{', '.join(HF_FAMILIES)}")
    kw = {}
    if tiny:
        width: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64}
        if name == "distilbert":
            width = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
        kw = {"vocab_size": 100, **width}
    config = configs[name](num_labels=2, **kw)
    model = models[name](config)
    seq = SEQ_LEN[size]
    # RoBERTa's position ids start after the padding id, so ids stay clear of special tokens.
    ids = torch.randint(5, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1))
    return model.eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def hf_task(family: str, size: str = "base") -> Any:
    """A :class:`~autocompress.tasks.base.Task` of a Hugging Face family with synthetic inputs
    (random token ids or pixels) labelled by the model's own predictions.

    >>> hf_task("hf:bert", "tiny").batch_input(2)["input_ids"].shape
    torch.Size([2, 8])
    """
    import copy

    import torch
    from torch.utils.data import DataLoader

    from autocompress import inputs
    from autocompress.tasks.base import Task
    from autocompress.tasks.synthetic import SYNTHETIC_TRAIN, SYNTHETIC_VAL

    model, x = hf_model(family, size)
    gen = torch.Generator().manual_seed(0)
    n = SYNTHETIC_TRAIN + SYNTHETIC_VAL
    rows: Any = []  # a list of dicts serves as a map-style dataset
    for _ in range(n):
        if "pixel_values" in x:
            row = {"pixel_values": torch.randn(x["pixel_values"].shape[1:], generator=gen)}
        else:
            ids = torch.randint(5, model.config.vocab_size, x["input_ids"].shape[1:],
                                generator=gen)
            row = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        rows.append(row)
    with torch.no_grad():
        for i in range(0, n, 16):
            batch = inputs.concat([{k: v[None] for k, v in r.items()} for r in rows[i:i + 16]])
            labels = inputs.call(model, batch).logits.argmax(-1)
            for r, y in zip(rows[i:i + 16], labels, strict=True):
                r["labels"] = y
    return Task(
        name=family, model=model, example_input=x,
        train_loader=DataLoader(rows[:SYNTHETIC_TRAIN], batch_size=HF_BATCH.get(family, 16),
                                shuffle=True, generator=gen),
        val_loader=DataLoader(rows[SYNTHETIC_TRAIN:], batch_size=16),
        metric=_agreement(copy.deepcopy(model)), metric_name="agreement", output="logits",
        baseline_metric=1.0, info={"weights": "random", "inputs": "synthetic", "size": size},
    )


def image_size(name: str) -> int:
    """The smallest of :data:`IMAGE_SIZES` a torchvision model runs on (its fixed size if it
    has one).

    >>> image_size("resnet18"), image_size("vit_b_16")
    (64, 224)
    """
    for prefix, size in FIXED_SIZE.items():
        if name.startswith(prefix):
            return size
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    for size in IMAGE_SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(2, 3, size, size))
        except Exception:  # too small for its kernels or pooling: try the next size
            continue
        return size
    return IMAGE_SIZES[-1]


def build_task(name: str, size: str = "base") -> tuple[Any, str]:
    """``(task, input description)`` for a torchvision model name or an ``hf:`` family."""
    from autocompress import inputs

    if name.startswith("hf:"):
        task = hf_task(name, size)
        return task, inputs.describe(task.example_input)
    from autocompress.tasks.synthetic import torchvision_task

    px = image_size(name)
    return torchvision_task(name, image_size=px), f"{px}x{px}"


# ---------------------------------------------------------------- stages
def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _error(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def run_stages(name: str, size: str = "base", progress: Path | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Run ``name`` through :data:`STAGES`; the row: ``reached`` (last stage passed, or None),
    ``failed`` (the stage that raised, or None), ``error``, ``seconds`` per stage, ``peak_rss_mb``
    and facts (input, layers, parameters, policy, ONNX error).

    With ``progress``, the row so far is written there before and after each stage, so a
    parent that kills the process still knows the stage it was in.

    >>> row = run_stages("hf:distilbert", "tiny")  # doctest: +SKIP
    >>> row["reached"]  # doctest: +SKIP
    'search'
    """
    import numpy as np
    import torch

    row: dict[str, Any] = {"model": name, "size": size, "reached": None, "failed": None,
                           "error": None, "seconds": {}, "peak_rss_mb": 0.0}
    state: dict[str, Any] = {}

    def save(running: str | None) -> None:
        row["running"] = running
        row["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        if progress is not None:
            progress.write_text(json.dumps(row))

    def build() -> None:
        task, shape = build_task(name, size)
        state["task"] = task
        row["input"] = shape
        row["params_m"] = round(sum(p.numel() for p in task.model.parameters()) / 1e6, 2)

    def inspect() -> None:
        from autocompress.inventory import build_inventory

        task = state["task"]
        inv = build_inventory(task.model, task.example_input)
        state["inventory"] = inv
        row["layers"] = len(inv)
        row["prunable_groups"] = len(inv.groups)
        if inv.pruning_error:
            row["pruning_error"] = inv.pruning_error[:200]

    def space() -> None:
        from autocompress.space import default_space

        resolved = default_space(state["task"].name, state["inventory"]).resolve(
            state["inventory"])
        state["space"] = resolved
        row["space"] = resolved.source
        row["space_params"] = len(resolved)

    def apply() -> None:
        from autocompress.methods import apply_policy

        task, resolved = state["task"], state["space"]
        policy = resolved.policy_from_params(resolved.draw_params(random.Random(seed)))
        state["policy"] = policy
        row["act8"] = any(lp.act_bits == 8 for lp in policy.layers.values())
        state["compressed"] = apply_policy(task.model, policy, task.example_input,
                                           state["inventory"])

    def export() -> None:
        from autocompress.runtime.onnx import export_onnx, onnx_nbytes

        state["onnx"] = export_onnx(state["compressed"], state["task"].example_input)
        row["onnx_mb"] = round(onnx_nbytes(state["onnx"]) / 1e6, 1)

    def onnx_match() -> None:
        from autocompress.runtime.onnx import onnx_agreement

        task = state["task"]
        got, ref = onnx_agreement(state["compressed"], state["onnx"], task.validation_batch(8),
                                  task.output)
        del state["onnx"]
        scale = max(float(np.abs(ref).max()), 1e-6)
        rel = float(np.abs(got - ref).max()) / scale if got.shape == ref.shape else float("inf")
        tol = TOLERANCE_ACT8 if row["act8"] else TOLERANCE
        row["onnx_rel_diff"] = rel
        if not rel <= tol:
            raise AssertionError(f"ONNX Runtime output {got.shape} differs from PyTorch "
                                 f"{ref.shape} by {rel:.3g} of its scale (tolerance {tol:g})")

    def search() -> None:
        from autocompress.engine import search as run_search

        state.pop("compressed", None)
        with tempfile.TemporaryDirectory() as out:
            result = run_search(state["task"], budget="macs<=80%", target="torch-1t-b1",
                                trials=2, finetune_steps=2, export=False, out=out, seed=seed)
        row["search_trials"] = len(result.trials)
        row["search_feasible"] = result.feasible

    steps = {"build": build, "inspect": inspect, "space": space, "apply": apply,
             "export": export, "onnx_match": onnx_match, "search": search}
    torch.set_num_threads(1)
    for stage in STAGES:
        save(stage)
        start = time.perf_counter()
        try:
            steps[stage]()
        except Exception as exc:  # any failure is this model's result, recorded and not raised
            row["seconds"][stage] = round(time.perf_counter() - start, 2)
            row["failed"], row["error"] = stage, _error(exc)
            row["traceback"] = traceback.format_exc()[-2000:]
            break
        row["seconds"][stage] = round(time.perf_counter() - start, 2)
        row["reached"] = stage
    save(None)
    return row


# ---------------------------------------------------------------- one subprocess per model
def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_isolated(name: str, size: str = "base", timeout_s: float = TIMEOUT_S,
                 memory_cap_gb: float = MEMORY_CAP_GB) -> dict[str, Any]:
    """:func:`run_stages` in a subprocess; a stage running past ``timeout_s`` (the whole
    model's time) or above ``memory_cap_gb`` of RSS is killed and recorded as that stage's
    ``timeout`` or ``memory`` failure, a crash as ``crash``."""
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "row.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        # stderr goes to a file: a pipe read only at the end fills with the libraries'
        # warnings (Torch-Pruning warns on every graph it builds) and blocks the worker.
        log = Path(tmp) / "stderr.txt"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--size",
                 size, "--progress", str(progress)],
                env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
            )
        start, peak, why = time.monotonic(), 0.0, None
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            peak = max(peak, rss)
            if time.monotonic() - start > timeout_s:
                why = f"timeout: over {timeout_s:.0f} s"
            elif rss > memory_cap_gb * 1024:
                why = f"memory: RSS over {memory_cap_gb:g} GB"
            if why:
                proc.kill()
                break
            time.sleep(0.2)
        proc.wait()
        stderr = log.read_text(errors="replace")
        row: dict[str, Any] = {"model": name, "size": size, "reached": None, "failed": None,
                               "error": None, "seconds": {}, "peak_rss_mb": 0.0}
        # A process killed in mid-write leaves half a row: the stage is then unknown.
        with contextlib.suppress(OSError, json.JSONDecodeError):
            row = json.loads(progress.read_text())
        running = row.pop("running", None)
        if why is None and proc.returncode != 0:
            tail = [line for line in (stderr or "").splitlines() if line.strip()][-1:]
            why = f"crash: exit {proc.returncode}" + (f" ({tail[0][:200]})" if tail else "")
        if why is not None:
            row["failed"], row["error"] = running or "build", why
            row["seconds"][row["failed"]] = round(time.monotonic() - start
                                                  - sum(row["seconds"].values()), 2)
        row["peak_rss_mb"] = round(max(row["peak_rss_mb"], peak), 1)
        return row


# ---------------------------------------------------------------- the table
def passed(row: dict[str, Any]) -> bool:
    """Whether ``row`` went through every stage."""
    return row["failed"] is None and row["reached"] == STAGES[-1]


def render(result: dict[str, Any]) -> str:
    """The markdown page of a benchmark result (``rows``, ``skipped``, ``not_run``, settings).

    >>> rows = [{"model": "a", "size": "base", "reached": "search", "failed": None,
    ...          "error": None, "seconds": {"build": 1.0}, "peak_rss_mb": 10.0, "input": "64x64"},
    ...         {"model": "hf:bert", "size": "base", "reached": "apply", "failed": "export",
    ...          "error": "MethodError: x", "seconds": {}, "peak_rss_mb": 5.0}]
    >>> md = render({"rows": rows, "skipped": {}, "not_run": [], "settings": {}})
    >>> "| a | 64x64 |" in md, "missed" in md
    (True, True)
    """
    rows = result["rows"]
    tv = [r for r in rows if not r["model"].startswith("hf:")]
    hf = [r for r in rows if r["model"].startswith("hf:")]
    tv_ok = sum(passed(r) for r in tv)
    hf_ok = [r["model"] for r in hf if passed(r)]
    total_tv = result.get("torchvision_total", len(tv))
    share = tv_ok / total_tv if total_tv else 0.0
    hf_all = all(f in hf_ok for f in HF_FAMILIES)
    met = share >= GOAL_SHARE and hf_all
    settings = result.get("settings", {})
    lines = [
        "# Model zoo: every stage on every model",
        "",
        "Each model, in its own process (random weights, synthetic inputs labelled by the "
        "model itself): " + " → ".join(f"`{s}`" for s in STAGES) + ". "
        "`space` is the task's default space (`torchvision_cnn` for torchvision, derived "
        "from the layers for Hugging Face), `apply` one random policy of it, `onnx_match` "
        f"ONNX Runtime within {TOLERANCE:g} (8-bit activations: {TOLERANCE_ACT8:g}) of the "
        "largest PyTorch output, `search` two trials under `macs<=80%` on `torch-1t-b1` with "
        "two fine-tune steps. Input: the smallest of "
        + ", ".join(map(str, IMAGE_SIZES)) + " pixels square that a torchvision model runs on; "
        "ViT, Swin and MaxViT take their fixed 224 (" + ", ".join(FIXED_SIZE) + "); Hugging "
        f"Face text models {SEQ_LEN['base']} token ids with an attention mask, HF ViT 224.",
        "",
        f"Settings: {json.dumps(settings)}",
        *[f"\n{note}" for note in result.get("notes", [])],
        "",
        f"**Goal** (≥ {GOAL_SHARE:.0%} of torchvision classification models and every "
        f"Hugging Face family pass every stage): **{'met' if met else 'missed'}**: "
        f"torchvision {tv_ok}/{total_tv} ({share:.0%}; {len(tv)} run), Hugging Face "
        f"{len(hf_ok)}/{len(HF_FAMILIES)} ({', '.join(hf_ok) or 'none'}).",
        "",
        "| model | input | params (M) | reached | failed at | error | "
        + " | ".join(f"{s} s" for s in STAGES) + " | peak RSS (MB) |",
        "|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|",
    ]
    for r in rows:
        secs = [f"{r['seconds'][s]:.1f}" if s in r["seconds"] else "" for s in STAGES]
        err = (r["error"] or "").replace("|", "\\|")
        lines.append(
            f"| {r['model']} | {r.get('input', '')} | {r.get('params_m', '')} | "
            f"{r['reached'] or '-'} | {r['failed'] or ''} | {err} | " + " | ".join(secs)
            + f" | {r['peak_rss_mb']:.0f} |"
        )
    if result.get("skipped"):
        lines += ["", "Skipped (over the parameter cap of "
                  f"{settings.get('max_params_m', MAX_PARAMS / 1e6):g} M parameters): "
                  + ", ".join(f"{m} ({p:g} M)" for m, p in result["skipped"].items()) + "."]
    if result.get("not_run"):
        lines += ["", "Not run (the run's time budget was spent first): "
                  + ", ".join(result["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s rows in place of its rows of the same models (new models are
    appended; a model run now is no longer "not run" or skipped); ``old``'s settings and
    counts stay.

    >>> merged = merge({"rows": [{"model": "a", "x": 1}, {"model": "b"}], "not_run": ["c"],
    ...                 "skipped": {"d": 300.0}},
    ...                {"rows": [{"model": "a", "x": 2}, {"model": "c"}, {"model": "d"}]})
    >>> merged["rows"], merged["not_run"], merged["skipped"]
    ([{'model': 'a', 'x': 2}, {'model': 'b'}, {'model': 'c'}, {'model': 'd'}], [], {})
    """
    fresh = {r["model"]: r for r in new["rows"]}
    rows = [fresh.pop(r["model"], r) for r in old["rows"]]
    rows += list(fresh.values())
    done = {r["model"] for r in rows}
    return {**old, "rows": rows, "not_run": [m for m in old.get("not_run", []) if m not in done],
            "skipped": {m: p for m, p in old.get("skipped", {}).items() if m not in done}}


def torchvision_params() -> dict[str, float]:
    """Millions of parameters of every torchvision classification model, from its weights'
    metadata (so no model is built).

    >>> round(torchvision_params()["resnet18"], 1)
    11.7
    """
    import torchvision

    out = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = list(torchvision.models.get_model_weights(name))
        out[name] = weights[0].meta["num_params"] / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: all)")
    parser.add_argument("--max-params", type=float, default=MAX_PARAMS / 1e6,
                        help="skip torchvision models above this many million parameters")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per model")
    parser.add_argument("--budget-s", type=float, default=35 * 60,
                        help="start no new model after this many seconds")
    parser.add_argument("--memory-cap-gb", type=float, default=MEMORY_CAP_GB,
                        help="stop a model whose process passes this resident memory")
    parser.add_argument("--size", default="base", choices=["base", "tiny"])
    parser.add_argument("--out", type=Path, default=RESULTS / "model_zoo")
    parser.add_argument("--update", action="store_true",
                        help="replace the rows of --models in the existing result, keep the rest")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_stages(args.worker, args.size, args.progress)
        return 0

    sys.path.insert(0, str(HERE))
    from report_files import write_result

    sizes = torchvision_params()
    wanted = args.models or [*HF_FAMILIES, *sorted(sizes, key=sizes.__getitem__)]
    skipped = {m: round(sizes[m], 1) for m in wanted
               if m in sizes and sizes[m] > args.max_params and not args.models}
    todo = [m for m in wanted if m not in skipped]
    rows: list[dict[str, Any]] = []
    not_run = list(todo)
    old = json.loads(args.out.with_suffix(".json").read_text()) if args.update else None
    start = time.monotonic()

    def result() -> dict[str, Any]:
        fresh = {
            "settings": {"size": args.size, "max_params_m": args.max_params,
                         "timeout_s": args.timeout, "budget_s": args.budget_s,
                         "memory_cap_gb": args.memory_cap_gb},
            "torchvision_total": len([m for m in sizes if not args.models or m in args.models]),
            "rows": rows, "skipped": skipped, "not_run": not_run,
        }
        return merge(old, fresh) if old is not None else fresh

    for name in todo:
        if time.monotonic() - start > args.budget_s:
            break
        row = run_isolated(name, args.size, args.timeout, args.memory_cap_gb)
        rows.append(row)
        not_run.remove(name)
        print(f"{name:28s} {row['reached'] or '-':>10s} {row['failed'] or '':>10s} "
              f"{sum(row['seconds'].values()):6.1f}s {row['peak_rss_mb']:6.0f}MB "
              f"{row['error'] or ''}", flush=True)
        if old is not None:  # an update keeps each finished row, so a stopped run loses none
            write_result(args.out, result(), render)
    print(write_result(args.out, result(), render))
    return 0


if __name__ == "__main__":
    sys.exit(main())
