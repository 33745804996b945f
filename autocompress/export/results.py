"""The study as tables and policy files: ``trials.csv``, ``pareto.csv``, ``policies/``.

These need only the study (no model, no data), so ``autocompress report``
regenerates them from ``study.log`` alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

import autocompress
from autocompress.errors import InputFileError, PolicyError
from autocompress.pareto import is_feasible, pareto_front, pick_best, trial_metric
from autocompress.policy import CompressionPolicy

# Optuna's own columns; user attributes are flattened separately (dicts -> "a.b" columns).
STUDY_ATTRS = (
    "number", "state", "value", "datetime_start", "datetime_complete", "duration",
    "params", "constraints",
)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: Optuna's columns, then every user attribute flattened.

    Columns: ``number``, ``state``, ``value`` (or ``values_0``, ``values_1`` in
    pareto mode), ``params_<fqn>/<knob>``, ``constraints_<clause>``; then the
    user attributes with nested dicts flattened to ``a.b`` (``violations.latency``);
    the policy stays one JSON column (``policy``), since its layer names hold dots.
    Added: ``feasible_complete`` (COMPLETE, metric set, every constraint <= 0),
    ``pareto`` (on the front) and ``best`` (the pick under the budget).
    """
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return pd.DataFrame(columns=["number", "state", "feasible_complete", "pareto", "best"])
    base = study.trials_dataframe(attrs=STUDY_ATTRS)
    records = []
    for t in trials:
        ua = dict(t.user_attrs)
        policy = ua.pop("policy", None)
        rec: dict[str, Any] = {}
        rec.update(pd.json_normalize(ua, sep=".").iloc[0].to_dict() if ua else {})
        rec["policy"] = json.dumps(policy, separators=(",", ":")) if policy is not None else None
        records.append(rec)
    user = pd.DataFrame.from_records(records, index=base.index)
    # user attrs win over nothing: Optuna's columns never clash with them (prefix-free names
    # such as "number" are not used as user attributes by the search).
    user = user[[c for c in user.columns if c not in base.columns]]
    df = pd.concat([base, user], axis=1)
    front = {t.number for t in pareto_front(study)}
    best = pick_best(study)
    df["feasible_complete"] = [is_feasible(t) for t in trials]
    df["pareto"] = [t.number in front for t in trials]
    df["best"] = [best is not None and t.number == best.number for t in trials]
    return df


def pareto_frame(study: optuna.Study, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of :func:`trials_frame` on the front, cheapest first."""
    df = trials_frame(study) if trials is None else trials
    order = [t.number for t in pareto_front(study)]
    if not order or df.empty:
        return df.iloc[0:0]
    return df.set_index("number", drop=False).loc[order].reset_index(drop=True)


def write_tables(study: optuna.Study, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``trials.csv`` and ``pareto.csv`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study)
    trials_csv, pareto_csv = out / "trials.csv", out / "pareto.csv"
    df.to_csv(trials_csv, index=False)
    pareto_frame(study, df).to_csv(pareto_csv, index=False)
    return trials_csv, pareto_csv


def trial_policy(trial: FrozenTrial, study: optuna.Study | None = None) -> CompressionPolicy:
    """The trial's :class:`CompressionPolicy` with its metrics and provenance filled in."""
    raw = trial.user_attrs.get("policy")
    if raw is None:
        raise PolicyError(
            f"trial {trial.number} has no 'policy' user attribute; expected the search to "
            "store CompressionPolicy.to_dict() on every trial (search contract)"
        )
    policy = CompressionPolicy.from_dict(raw, source=f"trial {trial.number} policy")
    ua = trial.user_attrs
    metrics = {
        "metric": trial_metric(trial),
        "predicted_latency_ms": ua.get("predicted_latency_ms"),
        "macs": ua.get("macs"),
        "bops": ua.get("bops"),
        "params": ua.get("params"),
        "size_bytes": ua.get("size_bytes"),
    }
    metric_name = None
    if study is not None:
        metric_name = study.user_attrs.get("baseline", {}).get("metric_name")
    if metric_name:
        metrics[metric_name] = metrics["metric"]
    return policy.model_copy(update={
        "metrics": {**(policy.metrics or {}), **metrics},
        "provenance": {**(policy.provenance or {}), **provenance(trial, study)},
    })


def provenance(trial: FrozenTrial | None, study: optuna.Study | None) -> dict[str, Any]:
    """Where a policy came from: study, trial, backend, seed and library versions."""
    import torch

    cfg = study.user_attrs.get("autocompress", {}) if study is not None else {}
    return {
        "study": study.study_name if study is not None else None,
        "trial": trial.number if trial is not None else None,
        "backend": cfg.get("backend", "optuna"),
        "strategy": (trial.user_attrs.get("strategy") if trial is not None else None)
        or cfg.get("strategy"),
        "seed": cfg.get("seed"),
        "autocompress": autocompress.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def write_policies(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """``policies/trial_<n>.json`` for every feasible COMPLETE trial and every front trial."""
    folder = Path(out_dir) / "policies"
    front = {t.number for t in pareto_front(study)}
    paths = []
    for t in study.get_trials(deepcopy=False):
        if (is_feasible(t) or t.number in front) and "policy" in t.user_attrs:
            paths.append(trial_policy(t, study).save(folder / f"trial_{t.number}.json"))
    return paths


STUDY_LOG = "study.log"
DEFAULT_STUDY = "autocompress"


def load_run_study(run_dir: str | Path, study_name: str | None = None) -> optuna.Study:
    """Open the study of a results folder (``<run>/study.log``, Optuna JournalStorage).

    The study name is read from the journal: ``study_name`` when given, else
    the only study in it, else the one named "autocompress" (the default).
    Raises :class:`InputFileError` for a missing folder, a missing or unreadable
    journal, or an ambiguous / unknown study name.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run = Path(run_dir)
    if not run.is_dir():
        raise InputFileError(
            f"results folder {str(run)!r} does not exist; expected the --out folder of "
            "'autocompress search' (it holds study.log)"
        )
    log = run / STUDY_LOG
    if not log.is_file():
        raise InputFileError(
            f"{str(log)!r} does not exist; expected the Optuna journal that "
            "'autocompress search --out RUN' writes (is this a results folder?)"
        )
    try:
        storage = JournalStorage(JournalFileBackend(str(log)))
        names = optuna.get_all_study_names(storage)
    except Exception as exc:
        raise InputFileError(
            f"{str(log)!r} is not a readable Optuna journal ({type(exc).__name__}: {exc}); "
            "expected the study.log written by 'autocompress search'"
        ) from exc
    if not names:
        raise InputFileError(f"{str(log)!r} holds no study; run 'autocompress search' first")
    if study_name is None:
        if len(names) == 1:
            study_name = names[0]
        elif DEFAULT_STUDY in names:
            study_name = DEFAULT_STUDY
        else:
            raise InputFileError(
                f"{str(log)!r} holds {len(names)} studies ({', '.join(names)}); "
                "pick one with --study NAME"
            )
    elif study_name not in names:
        raise InputFileError(
            f"study {study_name!r} is not in {str(log)!r}; it holds {', '.join(names)}"
        )
    return optuna.load_study(study_name=study_name, storage=storage)
