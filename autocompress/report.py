"""``report.html``: one self-contained page with the evidence of a search.

Three plotly charts (plotly.js inlined once, so the page opens offline) and
two tables:

- ``pareto-plot``: task metric vs predicted latency (or MACs when the study
  has no latency predictions) for every trial, feasible and infeasible
  coloured apart, the front, the budget line, the uncompressed baseline and,
  for the best trial, its re-measured latency next to the prediction;
- ``policy-plot``: the best policy per layer (prune ratio, weight bits, rank
  fraction, sparsity);
- ``progress-plot``: the best feasible metric so far vs trial number;
- a table of the top trials and the summary numbers (``summary.json``).

Infeasible trials are never fine-tuned (the search contract) so they have no
metric; they are drawn on the bottom edge of the Pareto plot at their cost.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from autocompress.pareto import (
    BUDGET_COST_ATTRS,
    as_number,
    budget_baseline_ms,
    budget_cost_key,
    cost_key,
    feasible_trials,
    is_feasible,
    metric_direction,
    pareto_front,
    pick_best,
    trial_metric,
)

PLOT_IDS = ("pareto-plot", "policy-plot", "progress-plot")
TITLES = {
    "pareto-plot": "Pareto front: metric vs latency",
    "policy-plot": "Best policy per layer",
    "progress-plot": "Search progress: best feasible metric so far",
}
COST_LABELS = {
    "predicted_latency_ms": "latency (ms, predicted)", "macs": "MACs", "bops": "BOPs",
    "params": "parameters", "size_bytes": "size (bytes)",
}
TOP_N = 15


def write_report(
    study: optuna.Study,
    out_path: str | Path,
    summary: Mapping[str, Any] | Any | None = None,
) -> Path:
    """Write ``report.html`` for ``study`` to ``out_path`` and return the path.

    ``summary`` is the export summary (an ``ExportSummary`` or the dict of
    ``summary.json``); without it the page still shows every chart, from the
    study alone (that is what ``autocompress report`` regenerates from).
    """
    summ = _as_dict(summary)
    trials = list(study.get_trials(deepcopy=False))
    best = _best_trial(study, trials, summ)
    figures = {
        "pareto-plot": pareto_figure(study, trials, summ, best),
        "policy-plot": policy_figure(best),
        "progress-plot": progress_figure(study, trials),
    }
    parts = []
    for i, (div_id, fig) in enumerate(figures.items()):
        parts.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=(i == 0),  # inline once: the page must open with no network
                div_id=div_id,
                config={"displaylogo": False},
            )
        )
    cfg = study.user_attrs.get("autocompress", {})
    title = f"autocompress report: {cfg.get('task', study.study_name)}"
    page = _PAGE.format(
        title=html.escape(title),
        heading=html.escape(title),
        subtitle=html.escape(_subtitle(study, cfg)),
        summary=_summary_table(study, trials, summ, best),
        pareto=parts[0],
        policy=parts[1],
        progress=parts[2],
        top=_top_table(study, trials),
    )
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ---- charts ---------------------------------------------------------------------------------


def pareto_figure(
    study: optuna.Study,
    trials: list[FrozenTrial],
    summary: Mapping[str, Any],
    best: FrozenTrial | None,
) -> go.Figure:
    """Metric vs cost: feasible / infeasible trials, the front, budget line, baseline, best."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    key = cost_key(done, budget_cost_key(study)) if done else "predicted_latency_ms"
    label = COST_LABELS.get(key, key)
    metric_name = _metric_name(study, summary)
    baseline = study.user_attrs.get("baseline", {})
    fig = go.Figure()

    feas = feasible_trials(done)
    fig.add_trace(go.Scatter(
        x=[as_number(t.user_attrs.get(key)) for t in feas],
        y=[trial_metric(t) for t in feas],
        mode="markers", name="feasible", marker={"color": "#1f77b4", "size": 8},
        text=[f"trial {t.number}" for t in feas], hovertemplate="%{text}<br>%{x}, %{y}",
    ))
    # A repeat (a filled proposal told an earlier trial's outcome) is that trial, not a point.
    infeas = [t for t in done if not is_feasible(t) and "repeat_of" not in t.user_attrs]
    if infeas:
        metrics = [trial_metric(t) for t in feas] + [as_number(baseline.get("metric"))]
        known = [m for m in metrics if m is not None]
        floor = min(known) if known else 0.0
        ys = [trial_metric(t) if trial_metric(t) is not None else floor for t in infeas]
        fig.add_trace(go.Scatter(
            x=[as_number(t.user_attrs.get(key)) for t in infeas], y=ys, mode="markers",
            name="infeasible (over budget; not fine-tuned, drawn at the bottom)",
            marker={"color": "#d62728", "symbol": "x", "size": 8},
            text=[_violations_text(t) for t in infeas], hovertemplate="%{text}<br>%{x}",
        ))
    front = pareto_front(study, done) if len(study.directions) == 1 else pareto_front(study)
    if front:
        fig.add_trace(go.Scatter(
            x=[as_number(t.user_attrs.get(key)) for t in front], y=[trial_metric(t) for t in front],
            mode="lines+markers", name="Pareto front", line={"color": "#2ca02c", "shape": "hv"},
            marker={"size": 10, "symbol": "circle-open"},
        ))
    base_x = as_number(baseline.get("latency_ms" if key == "predicted_latency_ms" else key))
    if base_x is not None and as_number(baseline.get("metric")) is not None:
        fig.add_trace(go.Scatter(
            x=[base_x], y=[baseline["metric"]], mode="markers", name="uncompressed baseline",
            marker={"color": "black", "symbol": "star", "size": 14},
        ))
        fresh = as_number(summary.get("baseline_latency_ms"))
        if key == "predicted_latency_ms" and fresh is not None:
            fig.add_trace(go.Scatter(
                x=[fresh], y=[baseline["metric"]], mode="markers",
                name="uncompressed, re-measured after export",
                marker={"color": "black", "symbol": "star-open", "size": 14},
            ))
    if best is not None:
        px = as_number(best.user_attrs.get(key))
        fig.add_trace(go.Scatter(
            x=[px], y=[trial_metric(best)], mode="markers",
            name=f"best (trial {best.number}), predicted",
            marker={"color": "#ff7f0e", "symbol": "diamond", "size": 14},
        ))
        measured = as_number(summary.get("measured_latency_ms"))
        best_metric = as_number(summary.get("best_metric"))
        if key == "predicted_latency_ms" and measured is not None:
            fig.add_trace(go.Scatter(
                x=[measured], y=[best_metric if best_metric is not None else trial_metric(best)],
                mode="markers", name="best, re-measured after export",
                marker={"color": "#ff7f0e", "symbol": "diamond-open", "size": 16,
                        "line": {"width": 2}},
            ))
    # The search checked predictions against its own baseline measurement; the export
    # checks the re-measured model against a fresh one. Both lines are drawn when they differ.
    text = summary.get("budget") or study.user_attrs.get("autocompress", {}).get("budget") or ""
    searched = _budget_limit(key, summary.get("budget_limits_study") or _study_limits(study))
    fresh_limit = _budget_limit(key, summary.get("budget_limits") or {})
    if searched is not None:
        fig.add_vline(x=searched, line_dash="dash", line_color="#d62728",
                      annotation_text=f"budget {text}", annotation_position="top left")
    if fresh_limit is not None and (searched is None or abs(fresh_limit - searched) > 0.01 * searched):
        fig.add_vline(x=fresh_limit, line_dash="dot", line_color="#ff7f0e",
                      annotation_text="budget vs re-measured baseline",
                      annotation_position="bottom right")
    fig.update_layout(
        title=TITLES["pareto-plot"] if key == "predicted_latency_ms"
        else f"Pareto front: metric vs {COST_LABELS.get(key, key)}",
        xaxis_title=label, yaxis_title=metric_name, template="plotly_white", height=480,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def policy_figure(best: FrozenTrial | None) -> go.Figure:
    """Bars per layer of the best policy: prune ratio, bits, rank fraction, sparsity."""
    rows = policy_rows(best) if best is not None else []
    knobs = [("prune", "prune ratio"), ("bits", "weight bits"),
             ("rank_fraction", "rank fraction"), ("sparsity", "sparsity")]
    fig = make_subplots(rows=len(knobs), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[k[1] for k in knobs])
    layers = [r["layer"] for r in rows]
    for i, (knob, label) in enumerate(knobs, start=1):
        fig.add_trace(go.Bar(x=layers, y=[r[knob] for r in rows], name=label,
                             text=[_fmt(r[knob]) for r in rows], textposition="auto"),
                      row=i, col=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_yaxes(range=[0, 33], row=2, col=1)
    fig.update_yaxes(range=[0, 1.05], row=3, col=1)
    fig.update_yaxes(range=[0, 1], row=4, col=1)
    title = TITLES["policy-plot"] + (f" (trial {best.number})" if best is not None else
                                     " (no feasible trial)")
    fig.update_layout(title=title, showlegend=False, template="plotly_white",
                      height=200 + 160 * len(knobs))
    return fig


def policy_rows(trial: FrozenTrial) -> list[dict[str, Any]]:
    """One row per layer of the trial's policy, knobs as plotted (untouched -> neutral value).

    The rank fraction is the searched ``<fqn>/rank`` parameter (the space
    searches fractions); without it, the policy's absolute rank over the
    layer's full rank when the trial stored it, else blank.
    """
    policy = trial.user_attrs.get("policy") or {}
    layers: dict[str, dict[str, Any]] = policy.get("layers", {})
    names = list(layers)
    for p in trial.params:
        fqn = p.rsplit("/", 1)[0]
        if "/" in p and fqn not in names:
            names.append(fqn)
    rows = []
    for fqn in names:
        lp = layers.get(fqn, {})
        frac = trial.params.get(f"{fqn}/rank")
        if not isinstance(frac, (int, float)) or isinstance(frac, bool) or frac > 1:
            frac = None
        rows.append({
            "layer": fqn,
            "prune": float(lp.get("prune") or 0.0),
            "bits": int(lp.get("bits") or 32),
            "rank_fraction": (
                float(frac) if frac is not None else (1.0 if "rank" not in lp else None)
            ),
            "rank": lp.get("rank"),
            "sparsity": float(lp.get("sparsity") or 0.0),
        })
    return rows


def progress_figure(study: optuna.Study, trials: list[FrozenTrial]) -> go.Figure:
    """Every feasible trial's metric and the best feasible metric so far, vs trial number."""
    maximize = metric_direction(study) == optuna.study.StudyDirection.MAXIMIZE
    xs, best_ys, pts_x, pts_y = [], [], [], []
    best: float | None = None
    for t in sorted(trials, key=lambda t: t.number):
        if is_feasible(t):
            m = float(trial_metric(t) or 0.0)
            pts_x.append(t.number)
            pts_y.append(m)
            if best is None or (m > best if maximize else m < best):
                best = m
        if best is not None:
            xs.append(t.number)
            best_ys.append(best)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=pts_x, y=pts_y, mode="markers", name="feasible trial",
                             marker={"color": "#1f77b4", "size": 6, "opacity": 0.6}))
    fig.add_trace(go.Scatter(x=xs, y=best_ys, mode="lines", name="best so far",
                             line={"shape": "hv", "color": "#ff7f0e", "width": 3}))
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in trials:
        if t.state.name in counts:
            counts[t.state.name] += 1
    fig.update_layout(
        title=f"{TITLES['progress-plot']} ({len(trials)} trials: "
        + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) + ")",
        xaxis_title="trial number", yaxis_title=_metric_name(study, {}),
        template="plotly_white", height=400,
    )
    return fig


# ---- tables ---------------------------------------------------------------------------------


def top_trials_frame(
    study: optuna.Study, trials: list[FrozenTrial], n: int = TOP_N
) -> pd.DataFrame:
    """The best ``n`` feasible trials: number, metric, predicted latency, MACs, size, times."""
    feas = feasible_trials(trials)
    reverse = metric_direction(study) == optuna.study.StudyDirection.MAXIMIZE
    feas.sort(key=lambda t: float(trial_metric(t) or 0.0), reverse=reverse)
    rows = []
    for t in feas[:n]:
        ua = t.user_attrs
        rows.append({
            "trial": t.number,
            _metric_name(study, {}): trial_metric(t),
            "predicted latency (ms)": ua.get("predicted_latency_ms"),
            "MACs": ua.get("macs"),
            "params": ua.get("params"),
            "size (bytes)": ua.get("size_bytes"),
            "fine-tune (s)": ua.get("finetune_s"),
            "strategy": ua.get("strategy"),
        })
    return pd.DataFrame(rows)


def _top_table(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    df = top_trials_frame(study, trials)
    if df.empty:
        return "<p>No feasible trial: no policy met the budget.</p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="",
                      classes="table", border=0, table_id="top-trials")


HEADLINE = (
    ("best_trial", "best trial"), ("best_metric", "metric (fixed validation subset)"),
    ("baseline_metric", "metric of the uncompressed model"),
    ("predicted_latency_ms", "latency predicted (ms)"),
    ("measured_latency_ms", "latency re-measured after export (ms)"),
    ("measured_latency_int8_ms", "int8 ONNX latency (ms)"),
    ("baseline_latency_ms", "uncompressed latency, same measurement (ms)"),
    ("speedup", "speedup (re-measured)"), ("meets_budget", "meets budget"),
    ("budget", "budget"), ("target", "target"), ("n_trials", "trials"),
    ("n_feasible", "feasible trials"),
)


def _summary_table(
    study: optuna.Study, trials: list[FrozenTrial], summary: Mapping[str, Any],
    best: FrozenTrial | None,
) -> str:
    """The headline numbers, then every summary field in a collapsed section."""
    rows: dict[str, Any] = {}
    if summary:
        rows = dict(summary)
    else:
        cfg = study.user_attrs.get("autocompress", {})
        base = study.user_attrs.get("baseline", {})
        rows = {
            "budget": cfg.get("budget"), "target": cfg.get("target"),
            "best_trial": best.number if best is not None else None,
            "best_metric": trial_metric(best) if best is not None else None,
            "predicted_latency_ms": best.user_attrs.get("predicted_latency_ms") if best else None,
            "baseline_latency_ms": base.get("latency_ms"), "baseline_metric": base.get("metric"),
            "n_trials": len(trials), "n_feasible": len(feasible_trials(trials)),
            "note": "regenerated from the study alone; export re-measures latency",
        }

    def table(items: list[tuple[str, Any]], table_id: str) -> str:
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in items
        )
        return f'<table class="table" id="{table_id}">{body}</table>'

    head = [(label, rows[k]) for k, label in HEADLINE if rows.get(k) is not None]
    if "note" in rows:
        head.append(("note", rows["note"]))
    # The export's notes change how the numbers read (a pick passed over, an int8 file that
    # runs slower): shown with them, not only in the collapsed fields.
    head += [("note", note) for note in rows.get("notes") or []]
    full = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in rows.items()]
    return (table(head, "summary")
            + "<details><summary>all fields of summary.json</summary>"
            + table(full, "summary-all") + "</details>")


# ---- helpers --------------------------------------------------------------------------------


def _best_trial(
    study: optuna.Study, trials: list[FrozenTrial], summary: Mapping[str, Any]
) -> FrozenTrial | None:
    number = summary.get("best_trial")
    if isinstance(number, int):
        for t in trials:
            if t.number == number:
                return t
    return pick_best(study, trials)


def _study_limits(study: optuna.Study) -> dict[str, float]:
    """Absolute budget limits from the study alone: its budget string and baseline costs."""
    from autocompress.cost import Costs, parse_budget

    text = study.user_attrs.get("autocompress", {}).get("budget")
    base = study.user_attrs.get("baseline", {})
    if not text:
        return {}
    try:
        baseline = Costs(
            macs=int(base.get("macs") or 0), bops=int(base.get("bops") or 0),
            params=int(base.get("params") or 0), size_bytes=int(base.get("size_bytes") or 0),
            latency_ms=budget_baseline_ms(study),
        )
        return parse_budget(text).limits(baseline)
    except Exception:  # a relative clause whose baseline is missing: no line, not no report
        return {}


def _budget_limit(key: str, limits: Mapping[str, Any]) -> float | None:
    """The limit on the plotted cost axis from resolved limits (``Budget.limits`` names)."""
    # Budget.limits() names clauses by budget metric ("latency", "macs", ...).
    metric = {attr: m for m, attr in BUDGET_COST_ATTRS.items()}.get(key, key)
    wanted = (metric, "latency_ms") if metric == "latency" else (metric, key)
    for name in wanted:
        if as_number(limits.get(name)) is not None:
            return as_number(limits.get(name))
    return None


def _metric_name(study: optuna.Study, summary: Mapping[str, Any]) -> str:
    return str(summary.get("metric_name")
               or study.user_attrs.get("baseline", {}).get("metric_name") or "metric")


def _subtitle(study: optuna.Study, cfg: Mapping[str, Any]) -> str:
    parts = [f"study {study.study_name}"]
    for k in ("budget", "target", "mode", "strategy", "seed", "finetune_steps"):
        if cfg.get(k) is not None:
            parts.append(f"{k} {cfg[k]}")
    return " | ".join(parts)


def _violations_text(t: FrozenTrial) -> str:
    v = t.user_attrs.get("violations") or t.constraints
    over = ", ".join(f"{k} +{float(x):.3g}" for k, x in v.items() if float(x) > 0)
    return f"trial {t.number}: over budget ({over})" if over else f"trial {t.number}"


def _as_dict(summary: Any) -> dict[str, Any]:
    if summary is None:
        return {}
    if isinstance(summary, Mapping):
        return dict(summary)
    if hasattr(summary, "to_dict"):
        return dict(summary.to_dict())
    raise TypeError(f"summary must be a mapping or have to_dict(), got {type(summary).__name__}")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} .sub {{ color: #666; margin-top: 0; }}
table.table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
table.table th, table.table td {{ padding: 3px 10px; border-bottom: 1px solid #ddd;
  text-align: left; }}
section {{ margin: 2em 0; }}
</style></head>
<body>
<h1>{heading}</h1>
<p class="sub">{subtitle}</p>
<section><h2>Summary</h2>{summary}</section>
<section>{pareto}</section>
<section>{policy}</section>
<section>{progress}</section>
<section><h2>Top trials</h2>{top}</section>
</body></html>
"""
