"""Throughput of shared studies: trials per hour with 1 vs 2 ``autocompress worker`` processes.

For each storage (a journal file; PostgreSQL when ``--pg-url`` or
``AUTOCOMPRESS_TEST_PG_URL`` is set) and each worker count, a fresh study is
created (configuration + baseline, ``autocompress worker --init-only``), then
``W`` worker processes are started together and timed until the study holds
``--trials`` finished trials. Every candidate does the same work: random
sampling, a MACs budget (no latency-table measurements inside the timed part),
no pruner, so each feasible trial runs all ``--steps`` fine-tune steps with one
torch thread. ``--ray`` adds the Ray backend (``max_concurrent`` 1 vs 2) on the
same config for comparison.

Two rates are reported:

- end-to-end: finished trials / wall time from starting the workers to the
  last one exiting (includes each process's start-up: torch import, task load);
- steady: trials finished between the first and the last completion / that span
  (what a long run approaches).

The machine's load average is recorded next to each row: on a machine shared
with other jobs the numbers move with that load.

    .venv/bin/python benchmarks/parallel.py                    # journal + PostgreSQL
    .venv/bin/python benchmarks/parallel.py --trials 16 --steps 150 --ray
    .venv/bin/python benchmarks/parallel.py table              # re-render parallel.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "parallel.json"
RESULTS_MD = HERE / "results" / "parallel.md"
CLI = "import sys; from autocompress.cli.app import main; sys.exit(main(sys.argv[1:]))"


def _config(path: Path, args: argparse.Namespace, out: Path) -> Path:
    path.write_text(
        f"task: digits\nbudget: '{args.budget}'\ntrials: {args.trials}\nstrategy: random\n"
        f"finetune_steps: {args.steps}\nreport_every: 0\npruner: none\nval_samples: 256\n"
        f"seed: 0\nout: {out}\nthreads: 1\n"
    )
    return path


def _cli(*argv: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CLI, *argv], env=env,
                            stdout=log.open("w") if log else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def _study_times(storage: str, name: str) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from autocompress.engine.storage import load_shared_study, open_storage

    study = load_shared_study(open_storage(storage, heartbeat_interval=None), name)
    trials = study.trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    ends = sorted(t.datetime_complete.timestamp() for t in done if t.datetime_complete)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 3600 if len(ends) > 2 and ends[-1] > ends[0] else None
    trial_s = [float(t.user_attrs.get("total_s") or 0) for t in done]
    optuna.delete_study(study_name=name, storage=open_storage(storage, heartbeat_interval=None))
    return {"finished": len(done), "failed": sum(t.state == TrialState.FAIL for t in trials),
            "steady_trials_per_hour": steady,
            "mean_trial_s": sum(trial_s) / len(trial_s) if trial_s else None,
            "workers_seen": len({t.user_attrs.get("worker") for t in done})}


def run_workers(storage: str, label: str, workers: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    name = f"bench-{label}-{workers}w-{uuid.uuid4().hex[:6]}"
    run = work / name
    run.mkdir(parents=True)
    cfg = _config(run / "search.yaml", args, run / "out")
    common = ["--config", str(cfg), "--storage", storage, "--study", name]
    init = _cli("worker", *common, "--init-only", log=run / "init.log")
    if init.wait() != 0:
        raise SystemExit(f"init failed, see {run / 'init.log'}")
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    procs = [_cli("worker", *common, "--poll", "0.5", log=run / f"worker{i}.log")
             for i in range(workers)]
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - t0
    if any(codes):
        raise SystemExit(f"a worker failed ({codes}), see {run}")
    row = {"backend": "optuna workers", "storage": label, "workers": workers,
           "trials": args.trials, "steps": args.steps, "wall_s": wall,
           "trials_per_hour": args.trials / wall * 3600,
           "load_before": load0, "load_after": os.getloadavg()[0]}
    row.update(_study_times(storage, name))
    return row


def run_ray(concurrent: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import optuna

    from autocompress.engine.config import SearchConfig
    from autocompress.engine.ray_backend import run_ray as ray_search

    out = work / f"ray-{concurrent}-{uuid.uuid4().hex[:6]}"
    cfg_path = _config(work / f"ray{concurrent}.yaml", args, out)
    cfg = SearchConfig.build(cfg_path, {"export": False})
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    result = ray_search(cfg, num_cpus=os.cpu_count(), max_concurrent=concurrent)
    wall = time.monotonic() - t0
    done = [t for t in result.study.trials if t.state != optuna.trial.TrialState.FAIL]
    ends = sorted(t.datetime_complete.timestamp() for t in done if t.datetime_complete)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 3600 if len(ends) > 2 and ends[-1] > ends[0] else None
    return {"backend": "ray tune", "storage": "ray (study.log after)", "workers": concurrent,
            "trials": args.trials, "steps": args.steps, "wall_s": wall,
            "trials_per_hour": args.trials / wall * 3600, "steady_trials_per_hour": steady,
            "finished": len(done), "failed": len(result.study.trials) - len(done),
            "mean_trial_s": sum(float(t.user_attrs.get("total_s") or 0) for t in done) / max(len(done), 1),
            "load_before": load0, "load_after": os.getloadavg()[0]}


def storage_overhead(storage: str, label: str, n: int = 40) -> dict[str, Any]:
    """Milliseconds per trial the storage itself costs: an objective that only records what
    an autocompress trial records (12 params, the contract's user attributes, a constraint,
    3 intermediate values), through the worker loop (heartbeat on for PostgreSQL)."""
    import optuna

    from autocompress.engine.storage import open_storage
    from autocompress.engine.workers import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage, heartbeat_interval=10)
    name = f"bench-overhead-{uuid.uuid4().hex[:6]}"
    # Random sampling: this measures the storage, not a sampler's model fitting.
    study = optuna.create_study(study_name=name, storage=st, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    policy = {"layers": {f"l{i}": {"prune": 0.25, "bits": 8} for i in range(4)}, "format": "x"}

    def objective(trial: optuna.Trial) -> float:
        for i in range(12):
            trial.suggest_float(f"l{i % 4}.{i}/prune", 0.0, 0.75, step=0.05)
        for step in (50, 100, 150):
            trial.report(0.9, step)
        trial.set_constraint("latency", -0.1)
        for key, value in {"policy": policy, "feasible": True, "violations": {"latency": -0.1},
                           "macs": 1, "bops": 1, "params": 1, "size_bytes": 1,
                           "predicted_latency_ms": 0.1, "metric": 0.9, "apply_s": 0.1,
                           "finetune_s": 1.0, "eval_s": 0.1, "cost_s": 0.01, "total_s": 1.2,
                           "strategy": "random", "worker": "bench"}.items():
            trial.set_user_attr(key, value)
        return 0.9

    t0 = time.perf_counter()
    run_worker(study, objective, n, poll_s=0.1)
    ms = (time.perf_counter() - t0) / n * 1000
    optuna.delete_study(study_name=name, storage=st)
    return {"storage": label, "trials": n, "ms_per_trial": ms}


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def f(v: Any, nd: int = 0) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    lines = [
        "# Parallel search throughput (trials per hour)",
        "",
        f"Machine: {meta.get('cpus')} CPUs ({meta.get('cpu')}), {meta.get('when')}. "
        f"Task digits, random sampling, budget `{meta.get('budget')}`, "
        f"{meta.get('steps')} KD fine-tune steps per trial (1 torch thread), no pruner, "
        f"{meta.get('trials')} trials per row.",
        "",
        "**This machine's CPU was shared with other jobs while this ran** (load average "
        "columns): absolute rates move with that load; compare rows measured close together.",
        "",
        "| backend | storage | workers | wall s | trials/h end-to-end | trials/h steady | "
        "mean trial s | finished | failed | load before/after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['storage']} | {r['workers']} | {f(r['wall_s'])} | "
            f"{f(r['trials_per_hour'])} | {f(r.get('steady_trials_per_hour'))} | "
            f"{f(r.get('mean_trial_s'), 1)} | {r.get('finished')} | {r.get('failed')} | "
            f"{f(r['load_before'], 1)} / {f(r['load_after'], 1)} |")
    speed = []
    for label in sorted({(r["backend"], r["storage"]) for r in rows}):
        one = [r for r in rows if (r["backend"], r["storage"]) == label and r["workers"] == 1]
        two = [r for r in rows if (r["backend"], r["storage"]) == label and r["workers"] == 2]
        if one and two:
            slow = (two[-1].get("mean_trial_s") or 0) / max(one[-1].get("mean_trial_s") or 0, 1e-9)
            speed.append(f"- {label[0]}, {label[1]}: 2 workers / 1 worker = "
                         f"{two[-1]['trials_per_hour'] / one[-1]['trials_per_hour']:.2f}x "
                         f"trials/h end-to-end; each trial took {slow:.1f}x as long")
    if speed:
        lines += ["", "Speed-up:", "", *speed, "",
                  "Reading: a worker runs one fine-tune on one thread, so 2 workers can at "
                  "best double the rate on 2 idle cores. When each trial takes about as many "
                  "times longer as there are workers, the cores were already busy (load average "
                  f"above {meta.get('cpus')}) and a second worker only splits them; the storage "
                  "(journal file or PostgreSQL) costs little next to a fine-tune (table below). On a "
                  "machine with idle cores, or across machines, throughput grows with workers "
                  "until the cores run out."]
    overhead = meta.get("overhead") or []
    if overhead:
        lines += ["", "Storage cost per trial (no fine-tune: only what a trial records, through "
                  "the worker loop, random sampler):", "",
                  "| storage | trials | ms per trial |", "|---|---:|---:|"]
        lines += [f"| {o['storage']} | {o['trials']} | {o['ms_per_trial']:.1f} |" for o in overhead]
    lines += ["", "Reproduce: `.venv/bin/python benchmarks/parallel.py` "
              f"(`{meta.get('argv')}`).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "table"])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--budget", default="macs<=60%")
    ap.add_argument("--pg-url", default=os.environ.get("AUTOCOMPRESS_TEST_PG_URL"))
    ap.add_argument("--ray", action="store_true", help="also time the Ray backend")
    ap.add_argument("--work", default="/tmp/autocompress-bench-parallel")
    args = ap.parse_args()
    if args.command == "table":
        data = json.loads(RESULTS_JSON.read_text())
        RESULTS_MD.write_text(table(data["rows"], data["meta"]))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    storages = [(str(work / f"journal-{uuid.uuid4().hex[:6]}.log"), "journal file")]
    if args.pg_url:
        storages.append((args.pg_url, "postgresql"))
    else:
        print("no --pg-url / AUTOCOMPRESS_TEST_PG_URL: PostgreSQL rows skipped", file=sys.stderr)
    overhead = [storage_overhead(storage, label) for storage, label in storages]
    print(json.dumps(overhead), flush=True)
    rows = []
    for storage, label in storages:
        for workers in (1, 2):
            row = run_workers(storage, label, workers, args, work)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.ray:
        for concurrent in (1, 2):
            row = run_ray(concurrent, args, work)
            print(json.dumps(row), flush=True)
            rows.append(row)
    import cpuinfo  # py-cpuinfo: a dependency of the latency fingerprint

    meta = {"cpus": os.cpu_count(), "cpu": cpuinfo.get_cpu_info().get("brand_raw"),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(), "trials": args.trials, "steps": args.steps,
            "budget": args.budget, "argv": " ".join(sys.argv[1:]) or "(defaults)",
            "overhead": overhead}
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    RESULTS_MD.write_text(table(rows, meta))
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
