"""How well a latency model predicts measured latency: Kendall tau, MAPE, share within +-10%.

:func:`validate` samples seeded random policies, predicts each with the
per-layer table (:class:`~autocompress.cost.lut.LatencyLUT`) and with the
MACs-proportional model (``baseline_ms * macs / baseline_macs``), builds each
with ``apply_policy`` and measures it on the target.

Each policy's model is timed in blocks that alternate with the uncompressed
model's, so two things are scored:

- **absolute**: predicted milliseconds against the policy's measured
  milliseconds (``lut``, ``macs``);
- **relative**: predicted speed ratio (prediction / the model's prediction of
  the uncompressed model) against the ratio measured in those alternating
  blocks (``lut_relative``, ``macs_relative``).

A relative budget (``latency<=0.5x``) compares exactly that ratio, and it is
immune to the slow drift of a shared machine's speed, which moves every
absolute measurement taken minutes apart (the table's entries, the models).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from autocompress.cost.analytic import analytic_costs
from autocompress.cost.latency import (
    LatencyStats,
    batched,
    make_runner,
    measure_interleaved,
    torch_threads,
)
from autocompress.cost.lut import LatencyLUT, activation_fraction, macs_model_ms
from autocompress.cost.sampling import build_sampled, random_policies
from autocompress.cost.timing import MODEL_BLOCKS, timing_lock
from autocompress.inputs import ModelInput, batch_size
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy


def scores(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """``{"kendall_tau", "mape", "within_10pct"}`` of predictions against measurements.

    ``mape`` and ``within_10pct`` are percentages.

    >>> {k: round(v, 3) for k, v in scores([1.0, 2.0, 3.3], [1.0, 2.0, 3.0]).items()}
    {'kendall_tau': 1.0, 'mape': 3.333, 'within_10pct': 100.0}
    """
    from scipy.stats import kendalltau

    if len(predicted) != len(measured) or not measured:
        raise ValueError("need as many predictions as measurements, at least one")
    errors = [abs(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    tau = float(kendalltau(predicted, measured).statistic) if len(measured) > 1 else float("nan")
    return {
        "kendall_tau": tau,
        "mape": 100.0 * sum(errors) / len(errors),
        "within_10pct": 100.0 * sum(e <= 0.10 for e in errors) / len(errors),
    }


@dataclass
class FidelityReport:
    """Scores of both latency models plus one row per sampled policy."""

    target: str
    lut: dict[str, float]
    macs: dict[str, float]
    baseline_ms: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    lut_relative: dict[str, float] = field(default_factory=dict)
    macs_relative: dict[str, float] = field(default_factory=dict)
    lut_build_s: float = 0.0
    lut_measurements: int = 0
    validate_s: float = 0.0
    # Test-retest (``validate(..., retest=True)``): every policy measured again in a second
    # pass, scored against its first measurement. No latency model can score better against
    # measurements than they agree with themselves.
    retest: dict[str, float] = field(default_factory=dict)
    retest_relative: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(
    model: nn.Module,
    example_input: ModelInput,
    inventory: LayerInventory,
    lut: LatencyLUT,
    n: int,
    seed: int = 0,
    runs: int = 30,
    progress: Callable[[int, int], None] | None = None,
    policies: Sequence[CompressionPolicy] | None = None,
    retest: bool = False,
) -> FidelityReport:
    """Predict and measure ``n`` random policies on ``lut.target``; score both latency models.

    ``policies``: score these instead (e.g. :func:`~autocompress.cost.sampling.space_policies`,
    the policies a search over a space visits); ``n`` and ``seed`` are then ignored.
    ``retest``: after the first pass, build and measure every policy again and score the
    second measurements against the first (``retest``, ``retest_relative``): how far the
    machine lets any model's predictions agree with a measurement.
    """
    t0 = time.perf_counter()
    measured_before = lut.measure_seconds
    fit = lut.whole_model_fit(inventory, model, example_input)
    baseline_ms = fit["model_ms"]
    target = lut.target
    x = batched(example_input, target.batch or batch_size(example_input))
    with torch_threads(target.threads):
        reference = make_runner(model, x, target)  # one runner (one ORT session) for all
    rows = []
    if policies is None:
        policies = random_policies(inventory, n, seed=seed)
    n = len(policies)
    def measure(policy: CompressionPolicy) -> tuple[float, LatencyStats, LatencyStats]:
        small = build_sampled(model, policy, example_input, inventory)
        with timing_lock(), torch_threads(target.threads):
            # Read as the search reads a candidate (paired_model_ms): each side's smallest
            # block median, the two timed in alternating blocks.
            (mine, ref), _ = measure_interleaved([make_runner(small, x, target), reference],
                                                 runs=runs, blocks=MODEL_BLOCKS,
                                                 target=target.name)
        return mine.stable_ms / ref.stable_ms, mine, ref

    total = 2 * n if retest else n
    for i, policy in enumerate(policies):
        pred = lut.predict_breakdown(policy, inventory, model, example_input)
        ratio, stats, ref = measure(policy)
        rows.append({
            "policy": i,
            "measured_ms": stats.stable_ms,
            "measured_median_ms": stats.median_ms,
            "measured_spread_ms": stats.spread_ms,
            "measured_ratio": ratio,
            "reference_ms": ref.stable_ms,
            "lut_ms": pred.latency_ms,
            "lut_layers_ms": sum(pred.layers_ms.values()),
            "lut_remainder_ms": pred.remainder_ms,
            "activation_fraction": activation_fraction(policy, inventory),
            "macs_ms": macs_model_ms(policy, inventory, baseline_ms),
            "macs": analytic_costs(policy, inventory, include_layers=False).macs,
            "layers": policy.to_dict()["layers"],
        })
        if progress:
            progress(i + 1, total)
    retest_scores: dict[str, dict[str, float]] = {"ms": {}, "ratio": {}}
    if retest:
        for i, (policy, row) in enumerate(zip(policies, rows, strict=True)):
            ratio, stats, _ = measure(policy)
            row["retest_measured_ms"], row["retest_ratio"] = stats.stable_ms, ratio
            if progress:
                progress(n + i + 1, total)
        retest_scores = {
            "ms": scores([r["retest_measured_ms"] for r in rows], [r["measured_ms"] for r in rows]),
            "ratio": scores([r["retest_ratio"] for r in rows], [r["measured_ratio"] for r in rows]),
        }
    measured = [r["measured_ms"] for r in rows]
    ratios = [r["measured_ratio"] for r in rows]
    # The table's own prediction of the uncompressed model is its measured baseline.
    return FidelityReport(
        target=lut.target.name,
        lut=scores([r["lut_ms"] for r in rows], measured),
        macs=scores([r["macs_ms"] for r in rows], measured),
        lut_relative=scores([r["lut_ms"] / baseline_ms for r in rows], ratios),
        macs_relative=scores([r["macs_ms"] / baseline_ms for r in rows], ratios),
        baseline_ms=baseline_ms,
        rows=rows,
        lut_build_s=lut.measure_seconds - measured_before,
        lut_measurements=lut.measured,
        validate_s=time.perf_counter() - t0,
        retest=retest_scores["ms"],
        retest_relative=retest_scores["ratio"],
    )
