"""Budget reach and filling cost: how far a space's corners really go, and what filling costs.

Two questions the search-quality table raises, answered with the search's own setup
(:func:`autocompress.engine.session.prepare_run`: the same latency table, baseline and
budget baseline a ``tpe`` search of the task uses):

1. **Reach.** Every corner of the task's default space
   (:meth:`ResolvedSpace.corner_policies`: prune at its maximum and every subset of
   the other knobs at their most compressing value) is predicted and then built and
   timed next to the uncompressed model, in alternating blocks
   (:class:`~autocompress.engine.judge.PolicyTimer`, what the trials use). The fastest measured corner says which budgets any strategy
   can meet at all; predicted against measured says how the table does at the
   space's extreme, where random policies of the fidelity benchmark rarely go.
2. **Filling cost.** ``--proposals`` seeded random proposals per latency budget are
   filled to the budget's edge (:meth:`Objective.candidate`, TPE's path): cost
   predictions and milliseconds per proposal, and where the filled policy lands
   (predicted latency / limit).

    .venv/bin/python benchmarks/budget_reach.py                       # digits, digits-mlp
    .venv/bin/python benchmarks/budget_reach.py --tasks digits-mlp --proposals 10

Writes ``benchmarks/results/budget_reach.md`` and ``.json``; about 3 minutes on 2
cores. digits-distorted is the digits CNN (same model, same latency): its reach is
the digits row.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from report_files import write_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASKS = ["digits", "digits-mlp"]
LATENCY_BUDGETS = ["latency<=0.5x", "latency<=0.35x", "latency<=0.25x"]
TARGET = "ort-1t"  # the search-quality benchmark's target


def _prepare(task: str, budget: str, out: Path) -> Any:
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.session import prepare_run

    # The defaults of a TPE search, in-loop checks included: they decide the budget baseline
    # the predictions are judged against (prepare_run measures nothing for them up front).
    cfg = SearchConfig.build(None, {"task": task, "budget": budget, "target": TARGET,
                                    "strategy": "tpe", "out": str(out), "trials": 1})
    return prepare_run(cfg, log=lambda msg: None)


def corner_rows(prep: Any) -> list[dict[str, Any]]:
    """Each corner's predicted and measured speed ratio to the uncompressed model."""
    from autocompress.engine.judge import PolicyTimer

    obj = prep.objective
    timer = PolicyTimer(prep.task, prep.inventory, prep.target)
    base_pred = float(obj.budget_baseline.latency_ms)
    rows = []
    for policy in prep.space.corner_policies():
        knobs = sorted({k for lp in policy.layers.values()
                        for k, v in lp.model_dump(exclude_none=True).items()})
        mine, ref = timer(policy)
        rows.append({"task": prep.task.name, "target": prep.target.name,
                     "corner": "+".join(knobs) or "uncompressed",
                     "predicted_ratio": float(obj.predict_raw(policy).latency_ms) / base_pred,
                     "measured_ratio": mine / ref, "measured_ms": mine, "baseline_ms": ref})
    return rows


def fill_rows(prep: Any, proposals: int, seed: int) -> dict[str, Any]:
    """Filling ``proposals`` seeded random proposals: predictions, ms and landing point."""
    obj = prep.objective
    rng = random.Random(seed)
    preds, ms, landed, unfilled = [], [], [], 0
    for _ in range(proposals):
        policy, info = obj.candidate(prep.space.draw_params(rng))
        if info is None:
            unfilled += 1
            continue
        preds.append(info["predictions"])
        ms.append(info["fill_s"] * 1000)
        landed.append(obj.screen(policy).constraints["latency"] + 1.0)
    row: dict[str, Any] = {"task": prep.task.name, "budget": prep.budget.text,
                           "proposals": proposals, "unfilled": unfilled}
    if preds:
        row.update({"predictions_mean": statistics.mean(preds), "predictions_max": max(preds),
                    "fill_ms_median": statistics.median(ms), "fill_ms_max": max(ms),
                    "landed_min": min(landed), "landed_mean": statistics.mean(landed),
                    "landed_max": max(landed)})
    return row


def render(result: dict[str, Any]) -> str:
    corners = pd.DataFrame(result["corners"])
    fills = pd.DataFrame(result["fills"])
    reach = []
    for task, g in corners.groupby("task", sort=False):
        best = g.loc[g["measured_ratio"].idxmin()]
        met = [b for b in LATENCY_BUDGETS if best["measured_ratio"] <= float(b.split("<=")[1][:-1])]
        reach.append(f"- {task}: fastest corner `{best['corner']}` measured "
                     f"{best['measured_ratio']:.3f}x (predicted {best['predicted_ratio']:.3f}x); "
                     f"reachable: {', '.join(met) or 'none of ' + ', '.join(LATENCY_BUDGETS)}")
    return "\n".join([
        "# Budget reach and filling cost (generated by benchmarks/budget_reach.py)", "",
        f"Measured {result['date']} on {result['cpu']}, target {TARGET}; "
        f"{result['wall_s']:.0f} s in all.", "",
        "## Corners of each task's default space", "",
        "Ratio to the uncompressed model; measured = the corner's model and the uncompressed "
        "model timed in alternating blocks (smallest block median each); predicted = the "
        "search's prediction over its budget baseline.", "",
        corners.drop(columns=["target"]).to_markdown(index=False, floatfmt=".3f"), "",
        *reach, "",
        "## Filling cost (TPE's proposals moved to the budget's edge)", "",
        f"{result['proposals']} seeded random proposals per budget; `landed` = the filled "
        "policy's predicted latency over its limit (the fill aims 5% under it).", "",
        fills.to_markdown(index=False, floatfmt=".3f"), "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--proposals", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "budget_reach")
    a = p.parse_args(argv)
    import onnxruntime
    import torch

    from autocompress.cost.latency import cpu_description

    t0 = time.perf_counter()
    corners, fills = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            for i, budget in enumerate(LATENCY_BUDGETS):
                prep = _prepare(task, budget, Path(tmp) / f"{task}-{i}")
                if i == 0:
                    print(f"{task}: measuring {len(prep.space.corner_policies())} corners",
                          file=sys.stderr)
                    corners += corner_rows(prep)
                fills.append(fill_rows(prep, a.proposals, a.seed))
                print(f"{task} {budget}: {fills[-1]}", file=sys.stderr)
    cpu = cpu_description()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "cpu": f"{cpu['cpu']} ({cpu['cores']} cores), torch {torch.__version__}, "
                     f"onnxruntime {onnxruntime.__version__}",
              "proposals": a.proposals, "wall_s": time.perf_counter() - t0,
              "corners": corners, "fills": fills}
    print(write_result(a.out, result, render))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
