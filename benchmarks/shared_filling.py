"""Budget filling with several workers on one study: what they train, with it and without it.

``W`` ``autocompress worker`` processes (started together, one torch thread each) fill one
TPE study under a MACs budget (no latency table, so nothing is timed inside a trial), with
``fill_budget`` on (the default: proposals moved to the budget's edge, edge points shared
through the study's claims, :mod:`autocompress.engine.taken`) and off (proposals trained as
drawn, which is what workers did before stop 16). Per row: policies trained, distinct ones,
proposals that walked off a taken edge point, repeats told instead of trained, the best
validation accuracy and the mean MACs share of the trained policies.

    .venv/bin/python benchmarks/shared_filling.py                          # PostgreSQL if
    .venv/bin/python benchmarks/shared_filling.py --storage journal        # AUTOCOMPRESS_TEST_PG_URL
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from parallel import _cli  # noqa: E402 - the same worker launcher as the throughput benchmark
from report_files import write_result  # noqa: E402


def run_row(storage: str, label: str, fill: bool, workers: int, seed: int,
            args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One shared study filled by ``workers`` processes; its trials summarised."""
    import optuna

    from autocompress.engine.storage import load_shared_study, open_storage
    from autocompress.engine.taken import REPEAT_ATTR, policy_digest, trained

    name = f"fill-{'on' if fill else 'off'}-{workers}w-s{seed}-{uuid.uuid4().hex[:6]}"
    run = work / name
    run.mkdir(parents=True)
    cfg = run / "search.yaml"
    cfg.write_text(
        f"task: {args.task}\nbudget: '{args.budget}'\ntrials: {args.trials}\nstrategy: tpe\n"
        f"fill_budget: {str(fill).lower()}\nfinetune_steps: {args.steps}\nreport_every: 0\n"
        f"pruner: none\nval_samples: {args.val_samples}\nseed: {seed}\nout: {run / 'out'}\n"
        "threads: 1\n")
    common = ["--config", str(cfg), "--storage", storage, "--study", name]
    if _cli("worker", *common, "--init-only", log=run / "init.log").wait() != 0:
        raise SystemExit(f"init failed, see {run / 'init.log'}")
    t0 = time.monotonic()
    procs = [_cli("worker", *common, "--poll", "0.5", log=run / f"worker{i}.log")
             for i in range(workers)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"a worker failed, see {run}")
    wall = time.monotonic() - t0
    st = open_storage(storage, heartbeat_interval=None)
    study = load_shared_study(st, name)
    done = [t for t in study.trials if trained(t)]
    base_macs = float(study.user_attrs["baseline"]["macs"])
    fills = [t.user_attrs["policy"]["provenance"].get("fill") or {} for t in done]
    row = {"storage": label, "fill": fill, "workers": workers, "seed": seed,
           "trials": args.trials, "steps": args.steps, "wall_s": round(wall, 1),
           "trained": len(done),
           "distinct": len({policy_digest(t.user_attrs["policy"]) for t in done}),
           "walked": sum("neighbour" in f for f in fills),
           "repeats": sum(REPEAT_ATTR in t.user_attrs for t in study.trials),
           "best_accuracy": max((float(t.user_attrs["metric"]) for t in done), default=None),
           "mean_macs_share": statistics.mean(float(t.user_attrs["macs"]) / base_macs
                                              for t in done) if done else None,
           "workers_seen": len({t.user_attrs.get("worker") for t in done})}
    optuna.delete_study(study_name=name, storage=st)
    return row


def render(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        "# Budget filling with several workers on one study", "",
        f"{m['when']}, {m['cpus']} CPUs. Task `{m['task']}`, budget `{m['budget']}`, TPE, "
        f"{m['trials']} trials of {m['steps']} KD fine-tune steps, {m['val_samples']} "
        "validation images, workers started together (`autocompress worker`). "
        "`fill on`: the default; proposals are moved to the budget's edge, and an edge "
        "point another worker trained or claimed is walked off. `fill off`: trained as drawn "
        "(what workers did before stop 16).", "",
        "| storage | fill | workers | seed | trained | distinct | walked | repeats | "
        "best accuracy % | mean MACs share | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        acc = "-" if r["best_accuracy"] is None else f"{100 * r['best_accuracy']:.2f}"
        share = "-" if r["mean_macs_share"] is None else f"{100 * r['mean_macs_share']:.1f}%"
        lines.append(f"| {r['storage']} | {'on' if r['fill'] else 'off'} | {r['workers']} | "
                     f"{r['seed']} | {r['trained']} | {r['distinct']} | {r['walked']} | "
                     f"{r['repeats']} | {acc} | {share} | {r['wall_s']} |")
    cmd = " ".join(["benchmarks/shared_filling.py", m["argv"]]).strip()
    lines += ["", f"Reproduce: `.venv/bin/python {cmd}` (PostgreSQL from "
              "`AUTOCOMPRESS_TEST_PG_URL`).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", choices=["postgresql", "journal"], default=None,
                    help="default: PostgreSQL when AUTOCOMPRESS_TEST_PG_URL is set")
    ap.add_argument("--pg-url", default=os.environ.get("AUTOCOMPRESS_TEST_PG_URL"))
    ap.add_argument("--task", default="digits-distorted")
    ap.add_argument("--budget", default="macs<=25%")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--val-samples", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--work", default="/tmp/autocompress-bench-shared-filling")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "shared_filling")
    args = ap.parse_args()
    kind = args.storage or ("postgresql" if args.pg_url else "journal")
    if kind == "postgresql" and not args.pg_url:
        raise SystemExit("--storage postgresql needs --pg-url or AUTOCOMPRESS_TEST_PG_URL")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    storage = args.pg_url if kind == "postgresql" else str(work / f"j-{uuid.uuid4().hex[:6]}.log")
    rows = []
    for seed in args.seeds:
        for fill in (True, False):
            row = run_row(storage, kind, fill, args.workers, seed, args, work)
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "task": args.task, "budget": args.budget, "trials": args.trials,
            "steps": args.steps, "val_samples": args.val_samples,
            "argv": " ".join(sys.argv[1:])}
    print(write_result(args.out, {"meta": meta, "rows": rows}, render))


if __name__ == "__main__":
    main()
