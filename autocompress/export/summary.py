"""``summary.json``: the outcome of a search, with the best model re-measured after export."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExportSummary:
    """What ``summary.json`` holds (``best_*`` are None when no trial met the budget).

    Latencies are milliseconds per call at the target batch. ``measured_latency_ms``
    and ``baseline_latency_ms`` come from one fresh measurement made after export
    (new ONNX Runtime sessions / eager runs, not the latency table);
    ``baseline_latency_study_ms`` is the baseline the search itself measured;
    ``baseline_latency_budget_ms`` the one its relative budgets were judged
    against (the faster of the latency table's time of the uncompressed model and
    the study's).
    ``meets_budget`` checks the analytic costs of the best policy and its
    re-measured latency against the budget (``meets_budget_basis`` says
    "measured", or "predicted" when export ran with ``measure=False``).
    ``budget_limits`` are the absolute limits per budget metric against the fresh
    baseline (what ``meets_budget`` uses); ``budget_limits_study`` against
    ``baseline_latency_budget_ms`` (what the trials' predictions were checked against).
    ``best_metric`` is scored on the trials' fixed validation subset (comparable
    with ``trial_metric``); ``best_metric_full_val`` on the whole validation data.

    >>> s = ExportSummary(metric_name="accuracy", budget="latency<=0.5x", target="ort-cpu-2t-b64")
    >>> s.to_dict()["best_trial"] is None and s.meets_budget is False
    True
    """

    metric_name: str
    budget: str
    target: str
    best_trial: int | None = None
    best_metric: float | None = None
    trial_metric: float | None = None
    best_metric_full_val: float | None = None
    baseline_metric: float | None = None
    higher_is_better: bool = True
    predicted_latency_ms: float | None = None
    measured_latency_ms: float | None = None
    measured_latency_p90_ms: float | None = None
    measured_latency_int8_ms: float | None = None
    baseline_latency_ms: float | None = None
    baseline_latency_study_ms: float | None = None
    baseline_latency_budget_ms: float | None = None
    speedup: float | None = None
    speedup_int8: float | None = None
    meets_budget: bool = False
    meets_budget_basis: str = "measured"
    violations: dict[str, float] = field(default_factory=dict)
    budget_limits: dict[str, float] = field(default_factory=dict)
    budget_limits_study: dict[str, float] = field(default_factory=dict)
    macs: int | None = None
    bops: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    baseline_macs: int | None = None
    baseline_size_bytes: int | None = None
    int8_metric: float | None = None
    onnx_max_abs_diff: float | None = None
    finetuned: bool = False
    finetune_steps: int | None = None
    n_trials: int = 0
    n_complete: int = 0
    n_feasible: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    study_name: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """Write the summary as indented JSON and return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def read(cls, path: str | Path) -> ExportSummary:
        """Read a ``summary.json`` back (unknown keys from newer versions are ignored)."""
        data = json.loads(Path(path).read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
