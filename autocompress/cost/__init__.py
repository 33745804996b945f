"""Cost models: analytic costs, measured latency, a per-layer latency table, budgets.

- :func:`analytic_costs` (policy, inventory) -> :class:`Costs` (MACs, BOPs, params, size)
  without building the model;
- :func:`measure_latency` (model, example_input, :class:`Target`) -> :class:`LatencyStats`;
- :class:`LatencyLUT`: per-layer measured latency table, ``predict`` a policy's latency;
- :func:`parse_budget` -> :class:`Budget` with ``check(costs, baseline)``.
"""

from autocompress.cost.analytic import (
    Costs,
    LayerCost,
    LayerShape,
    analytic_costs,
    compressed_shapes,
)
from autocompress.cost.budget import Budget, Clause, parse_budget
from autocompress.cost.latency import LatencyStats, env_fingerprint, measure_latency
from autocompress.cost.lut import LatencyLUT, Prediction, macs_model_ms
from autocompress.cost.lut_store import default_lut_path
from autocompress.cost.target import Target, parse_target

__all__ = [
    "Budget",
    "Clause",
    "Costs",
    "LatencyLUT",
    "LatencyStats",
    "LayerCost",
    "LayerShape",
    "Prediction",
    "Target",
    "analytic_costs",
    "compressed_shapes",
    "default_lut_path",
    "env_fingerprint",
    "macs_model_ms",
    "measure_latency",
    "parse_budget",
    "parse_target",
]
