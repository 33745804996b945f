"""Budgets a user can type: ``latency<=0.5x``, ``latency<=2.5ms``, ``macs<=40%``, ``size<=1.5MB``.

Grammar: ``<metric><=<value>[unit]``, clauses joined by commas.

- metric: ``latency`` | ``macs`` | ``size`` | ``bops`` | ``params``
- relative units (to the uncompressed model, on the same target for latency):
  ``x`` (``0.5x``) and ``%`` (``40%``)
- latency: ``ms``, ``us`` (or ``µs``), ``s``
- size: ``B``, ``KB``/``MB``/``GB`` (powers of 1000), ``KiB``/``MiB``/``GiB`` (powers of 1024),
  or a bare number of bytes
- macs, bops, params: a bare number (``1e9``) or with ``K``/``M``/``G``/``T`` (``300M``)

:meth:`Budget.check` follows Optuna's ``set_constraint`` convention: one
value per clause, ``<= 0`` when met; the value is the relative excess
``cost / limit - 1``, so clauses of different units weigh alike.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from autocompress.cost.analytic import METRICS, Costs
from autocompress.errors import BudgetError

GRAMMAR = (
    "expected <metric><=<value>[unit] joined by commas, metric one of "
    'latency|macs|size|bops|params, e.g. "latency<=0.5x,size<=1.5MB"'
)

_CLAUSE = re.compile(r"^\s*([a-z_]+)\s*<=\s*([0-9.]+(?:e[+-]?\d+)?)\s*([a-zµ%]*)\s*$", re.I)

_LATENCY_UNITS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_UNIT_HELP = {
    "latency": "ms, us, s, x or %",
    "size": "B, KB, MB, GB, KiB, MiB, GiB, x or %",
    "macs": "K, M, G, T, x or % (or none)",
    "bops": "K, M, G, T, x or % (or none)",
    "params": "K, M, G, T, x or % (or none)",
}
# The unit each metric is reported in.
UNIT_NAMES = {"latency": "ms", "size": "bytes", "macs": "MACs", "bops": "BOPs", "params": "params"}


@dataclass(frozen=True)
class Clause:
    """One ``<metric> <= <limit>`` clause.

    ``relative`` limits are fractions of the uncompressed model's cost
    (``0.5x`` and ``50%`` are both 0.5); absolute ones are in ms (latency),
    bytes (size) or plain counts.
    """

    metric: str
    limit: float
    relative: bool
    text: str

    def absolute_limit(self, baseline: Costs | None) -> float:
        """The limit in the metric's unit (relative ones need the baseline's cost)."""
        if not self.relative:
            return self.limit
        base = baseline.value(self.metric) if baseline is not None else None
        if base is None:
            what = "latency on the target" if self.metric == "latency" else self.metric
            raise BudgetError(
                f"budget {self.text!r} is relative to the uncompressed model, whose {what} "
                "is unknown; measure the baseline first or give an absolute limit"
            )
        return self.limit * float(base)


@dataclass(frozen=True)
class Budget:
    """Clauses that must all hold.

    >>> b = parse_budget("latency<=0.5x, size<=1.5MB")
    >>> b.needs_latency, [c.metric for c in b.clauses]
    (True, ['latency', 'size'])
    >>> base = Costs(macs=100, bops=0, params=10, size_bytes=2_000_000, latency_ms=4.0)
    >>> b.check(Costs(macs=50, bops=0, params=5, size_bytes=750_000, latency_ms=1.0), base)
    (True, {'latency': -0.5, 'size': -0.5})
    """

    clauses: tuple[Clause, ...]

    @property
    def text(self) -> str:
        return ",".join(c.text for c in self.clauses)

    def __str__(self) -> str:
        return self.text

    @property
    def metrics(self) -> list[str]:
        return [c.metric for c in self.clauses]

    @property
    def needs_latency(self) -> bool:
        """True when a clause limits latency (so a latency model must be built)."""
        return "latency" in self.metrics

    def limits(self, baseline: Costs | None = None) -> dict[str, float]:
        """Absolute limit per metric (the tightest when a metric appears twice)."""
        out: dict[str, float] = {}
        for c in self.clauses:
            lim = c.absolute_limit(baseline)
            out[c.metric] = min(out.get(c.metric, lim), lim)
        return out

    def check(self, costs: Costs, baseline: Costs | None = None) -> tuple[bool, dict[str, float]]:
        """``(feasible, violations)``: per metric ``cost / limit - 1``, ``<= 0`` when met.

        ``baseline`` (the uncompressed model's costs) is needed for relative clauses.
        """
        violations: dict[str, float] = {}
        for metric, limit in self.limits(baseline).items():
            value = costs.value(metric)
            if value is None:
                raise BudgetError(
                    f"budget {self.text!r} limits {metric} but the candidate has no {metric} "
                    "cost; predict or measure its latency before checking the budget"
                )
            violations[metric] = float(value) / limit - 1.0 if limit > 0 else float("inf")
        return all(v <= 0 for v in violations.values()), violations

    def constraints(self, costs: Costs, baseline: Costs | None = None) -> list[float]:
        """Violations as a list in clause-metric order (for Optuna's ``constraints_func``)."""
        return list(self.check(costs, baseline)[1].values())

    def check_reachable(self, smallest: Costs, baseline: Costs | None = None) -> None:
        """Raise :class:`BudgetError` when even the smallest policy in reach breaks a clause.

        ``smallest`` is the cost of the most compressed policy the search
        space allows; a budget below it can never be met.
        """
        ok, violations = self.check(smallest, baseline)
        if ok:
            return
        limits = self.limits(baseline)
        worst = max(violations, key=violations.__getitem__)
        have = smallest.value(worst)
        raise BudgetError(
            f"budget {worst}<={format_cost(limits[worst], worst)} is below what the smallest policy in "
            f"the search space reaches ({format_cost(float(have or 0), worst)}); loosen the budget, "
            "widen the search space or (for latency) measure at a larger --batch"
        )

    def to_dict(self, baseline: Costs | None = None, target: str | None = None) -> dict[str, Any]:
        """The ``budget`` section of a policy file: text, absolute limits, target."""
        d: dict[str, Any] = {"text": self.text}
        with contextlib.suppress(BudgetError):
            d["limits"] = self.limits(baseline)
        if target:
            d["target"] = target
        return d


def format_cost(value: float, metric: str) -> str:
    """A cost of ``metric`` with its unit, as budgets write it.

    >>> format_cost(0.84491, "latency"), format_cost(1.5e6, "size"), format_cost(3e7, "macs")
    ('0.8449ms', '1.5e+06B', '3e+07')
    """
    if metric == "latency":
        return f"{value:.4g}ms"
    if metric == "size":
        return f"{value:.4g}B"
    return f"{value:.4g}"


def parse_budget(text: str | Budget) -> Budget:
    """Parse a budget string (see the module docstring for the grammar).

    >>> [(c.metric, c.limit, c.relative) for c in parse_budget("latency<=300us,macs<=40%").clauses]
    [('latency', 0.3, False), ('macs', 0.4, True)]
    >>> parse_budget("latency<0.5")
    Traceback (most recent call last):
    ...
    autocompress.errors.BudgetError: expected <metric><=<value>[unit] joined by commas, metric one of latency|macs|size|bops|params, e.g. "latency<=0.5x,size<=1.5MB"; got 'latency<0.5'
    """
    if isinstance(text, Budget):
        return text
    if not isinstance(text, str) or not text.strip():
        raise BudgetError(f"{GRAMMAR}; got {text!r}")
    clauses = []
    for part in text.split(","):
        clauses.append(_parse_clause(part.strip(), text))
    return Budget(tuple(clauses))


def _parse_clause(part: str, whole: str) -> Clause:
    m = _CLAUSE.match(part)
    if not m:
        raise BudgetError(f"{GRAMMAR}; got {part or whole!r}")
    metric, number, unit = m[1].lower(), m[2], m[3]
    if metric not in METRICS:
        raise BudgetError(f"unknown budget metric {metric!r} in {part!r}; {GRAMMAR}")
    try:
        value = float(number)
    except ValueError:
        raise BudgetError(f"{GRAMMAR}; got {part!r} ({number!r} is not a number)") from None
    if value <= 0:
        raise BudgetError(f"budget limit must be > 0 in {part!r}; {GRAMMAR}")
    u = unit.lower()
    if u in ("x", "%"):
        return Clause(metric, value / 100 if u == "%" else value, True, part)
    table = (
        _LATENCY_UNITS if metric == "latency"
        else _SIZE_UNITS if metric == "size"
        else _COUNT_UNITS
    )
    # Counts take K/M/G/T in any case; size units are case-insensitive too ("mb" == "MB").
    if u not in table:
        need = " (a bare number is ambiguous)" if metric == "latency" and not u else ""
        raise BudgetError(
            f"unit {unit!r} does not fit {metric} in {part!r}{need}; {metric} takes "
            f"{_UNIT_HELP[metric]}; {GRAMMAR}"
        )
    return Clause(metric, value * table[u], False, part)
