"""Baseline strategies that the search must beat, run through the same objective and budget.

- ``uniform``: one setting for every layer. First the setting a person would try first
  (8-bit weights, and inputs, where that lets less pruning meet the budget; the warm start
  of the sampled searches); then, for each combination of the non-prune knobs (bits, rank
  fraction, sparsity, act bits; least compressing first), the smallest uniform prune ratio
  that meets the budget, found by bisection on the predicted cost; each such point is one
  trial.
- ``greedy``: per-layer sensitivity, allocated under the budget, as AIMET's
  greedy compression-ratio selection does. Each knob of each layer is set
  alone to each of its values and the model is scored without fine-tuning;
  for a metric threshold ``tau`` every knob takes its most compressing value
  that still scores ``>= tau`` (``<=`` for lower-is-better metrics); ``tau``
  is bisected to the strictest value whose policy meets the budget, and
  successive looser thresholds give the next candidates.
- ``random`` is Optuna's ``RandomSampler`` (see the backend).

Both yield each *policy* once: parameter dicts that make a policy already yielded are
skipped, so no baseline trial is spent fine-tuning a policy again.

Both produce parameter dicts (``{<fqn>/<knob>: value}``) lazily; the backend
enqueues them as trials, so a baseline trial is fine-tuned exactly like a
sampled one. Everything is a pure function of the space, the feasibility
predicate and the sensitivity scores, so a resumed run regenerates the same
sequence and skips what is done.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from autocompress.policy import CompressionPolicy
from autocompress.space import ResolvedSpace

Params = dict[str, Any]
Feasible = Callable[[Params], bool]
NON_PRUNE = ("bits", "rank", "sparsity", "act_bits")
MAX_LEVELS = 8  # sensitivity points per knob (evenly spaced over its values)


def params_key(params: Params) -> tuple[tuple[str, Any], ...]:
    """A hashable, float-noise-free identity of a parameter dict."""
    return tuple(sorted((k, round(float(v), 6)) for k, v in params.items()))


def _params_digest(space: ResolvedSpace, params: Params) -> str:
    """The identity of the policy ``params`` make. Two parameter dicts can make one policy:
    a rank fraction at or above a pruned layer's break-even factorises nothing, so uniform
    prune 0.65 at rank 0.5 is prune 0.65 alone, and a baseline that told them apart would
    fine-tune one policy several times."""
    from autocompress.engine.taken import policy_digest

    return policy_digest(space.policy_from_params(params).to_dict())


def _bisect_first_true(n: int, pred: Callable[[int], bool]) -> int | None:
    """Smallest index in ``range(n)`` where the monotone ``pred`` holds, or None."""
    if n == 0 or not pred(n - 1):
        return None
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------- uniform
# The uniform settings a warm start may quantise to: float, 8-bit weights, 8-bit weights and
# inputs. Eight bits barely move a trained model, and 8/8 lets ONNX Runtime run integer
# kernels; anything lower, and rank and sparsity, are left to the search.
WARM_QUANTISATION: tuple[dict[str, int], ...] = ({}, {"bits": 8}, {"bits": 8, "act_bits": 8})


def uniform_starts(space: ResolvedSpace, feasible: Feasible) -> Iterator[Params]:
    """The uniform setting a person would try first, then the same setting pruned one uniform
    level further at a time (lazy): where a timing on the target says one misses the budget,
    the next to time. :func:`uniform_candidates` yields the first first, and the sampled
    searches start from it.

    The first is quantised to 8 bits where that helps, then pruned as little as meets the
    budget: of the :data:`WARM_QUANTISATION` settings, the one that meets ``feasible`` with
    the smallest uniform prune ratio (by bisection); ties go to the less quantised. Nothing
    when none meets it (rank and sparsity may then be needed).

    >>> import torch
    >>> from autocompress.derived_space import derive_space
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> sp = derive_space(inv).resolve(inv)
    >>> def pruned_quarter(p):
    ...     return all(v >= 0.25 for k, v in p.items() if k.endswith("/prune"))
    >>> def int8_or_pruned(p):  # a target where 8-bit inputs make the layers fast
    ...     return pruned_quarter(p) or all(v == 8 for k, v in p.items() if k.endswith("act_bits"))
    >>> [(p["net.1/prune"], p["net.1/bits"]) for p in uniform_starts(sp, pruned_quarter)]
    [(0.3, 32), (0.4, 32), (0.5, 32)]
    >>> quantised = next(uniform_starts(sp, int8_or_pruned))
    >>> quantised["net.1/prune"], quantised["net.1/bits"], quantised["net.1/act_bits"]
    (0.0, 8, 8)
    """
    prune_levels = _union_levels(space, "prune")
    best: tuple[int, dict[str, int]] | None = None
    for quantisation in WARM_QUANTISATION:
        def params_for(i: int | None, q: dict[str, int] = quantisation) -> Params:
            return space.uniform_params(prune=None if i is None else prune_levels[i], **q)

        if prune_levels:
            first = _bisect_first_true(len(prune_levels), lambda i: feasible(params_for(i)))
        else:
            first = 0 if feasible(params_for(None)) else None
        if first is not None and (best is None or first < best[0]):
            best = (first, quantisation)
    if best is None:
        return
    first, quantisation = best
    if not prune_levels:
        yield space.uniform_params(**quantisation)
        return
    seen = set()  # neighbouring levels can keep the same channel blocks in every layer
    for i in range(first, len(prune_levels)):
        params = space.uniform_params(prune=prune_levels[i], **quantisation)
        if _params_digest(space, params) not in seen:
            seen.add(_params_digest(space, params))
            yield params


def _union_levels(space: ResolvedSpace, knob: str) -> list[Any]:
    """Values of ``knob`` over all layers, least compressing first (as the layers order them)."""
    params = [p for p in space.params.values() if p.knob == knob]
    if not params:
        return []
    values = sorted({float(v) for p in params for v in p.levels()})
    return sorted(values, reverse=knob in ("bits", "rank", "act_bits"))


def uniform_candidates(space: ResolvedSpace, feasible: Feasible,
                       warm: Params | None = None) -> Iterator[Params]:
    """Uniform settings that meet the budget (lazy): first the one a person would try first
    (``warm``, by default the first of :func:`uniform_starts`; a search on the target
    passes the one its timings placed), then the others, least compressing first.

    Pass 0 yields, per combination of the other knobs, the smallest feasible
    uniform prune ratio (by bisection); pass ``k`` yields the ratio ``k``
    steps above it, so the sequence never runs dry before the space does.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> from autocompress.space import SearchSpace
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> sp = SearchSpace.from_yaml("defaults: {prune: {low: 0, high: 0.5, step: 0.25}}").resolve(inv)
    >>> first = next(uniform_candidates(sp, lambda p: p["features.0/prune"] >= 0.25))
    >>> first["features.0/prune"], first["features.2/prune"]
    (0.25, 0.25)
    """
    prune_levels = _union_levels(space, "prune")
    other = {k: _union_levels(space, k) for k in NON_PRUNE}
    other = {k: v for k, v in other.items() if v}
    names = list(other)
    combos = list(itertools.product(*(range(len(other[k])) for k in names)))
    combos.sort(key=lambda idx: (sum(i / max(len(other[k]) - 1, 1)
                                     for i, k in zip(idx, names, strict=True)), idx))

    def params_for(prune_i: int | None, combo: tuple[int, ...]) -> Params:
        kw: dict[str, Any] = {("rank_fraction" if k == "rank" else k): other[k][i]
                              for k, i in zip(names, combo, strict=True)}
        if prune_i is not None:
            kw["prune"] = prune_levels[prune_i]
        return space.uniform_params(**kw)

    seen: set[str] = set()  # policies yielded (distinct parameters can make the same one)
    start: dict[tuple[int, ...], int] = {}
    if warm is None:
        warm = next(uniform_starts(space, feasible), None)
    if warm is not None:
        seen.add(_params_digest(space, warm))
        yield warm
    for combo in combos:
        if prune_levels:
            def pred(i: int, c: tuple[int, ...] = combo) -> bool:
                return feasible(params_for(i, c))

            first = _bisect_first_true(len(prune_levels), pred)
            if first is None:
                continue
            start[combo] = first
            params = params_for(first, combo)
        else:
            params = params_for(None, combo)
            if not feasible(params):
                continue
            start[combo] = 0
        key = _params_digest(space, params)
        if key not in seen:
            seen.add(key)
            yield params
    for k in range(1, len(prune_levels)):
        for combo, first in start.items():
            if first + k < len(prune_levels):
                params = params_for(first + k, combo)
                key = _params_digest(space, params)
                if key not in seen:
                    seen.add(key)
                    yield params


# ---------------------------------------------------------------- greedy
def sensitivity_points(space: ResolvedSpace) -> dict[str, list[Any]]:
    """The values each knob is scored at alone (its compressing values, at most MAX_LEVELS)."""
    out: dict[str, list[Any]] = {}
    for name, p in space.params.items():
        levels = p.levels()[1:]
        if len(levels) > MAX_LEVELS:
            step = (len(levels) - 1) / (MAX_LEVELS - 1)
            levels = [levels[round(i * step)] for i in range(MAX_LEVELS)]
        out[name] = levels
    return out


def greedy_sensitivity(
    space: ResolvedSpace,
    score: Callable[[CompressionPolicy], float],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """``{param: {str(value): metric}}``: the metric with only that knob set (no fine-tune).

    The uncompressed value of every knob scores ``score`` of the identity policy.
    """
    identity = space.identity_params()
    base = score(space.policy_from_params(identity))
    points = sensitivity_points(space)
    total = sum(len(v) for v in points.values())
    table: dict[str, dict[str, float]] = {}
    done = 0
    for name, values in points.items():
        row = {repr(float(space.params[name].levels()[0])): base}
        for v in values:
            params = dict(identity)
            params[name] = v
            row[repr(float(v))] = float(score(space.policy_from_params(params)))
            done += 1
            if progress:
                progress(done, total)
        table[name] = row
    return table


def greedy_candidates(
    space: ResolvedSpace,
    sensitivity: dict[str, dict[str, float]],
    feasible: Feasible,
    higher_is_better: bool = True,
) -> Iterator[Params]:
    """Greedy allocations under the budget: the strictest feasible threshold first (lazy)."""
    identity = space.identity_params()

    def ok(metric: float, tau: float) -> bool:
        return metric >= tau if higher_is_better else metric <= tau

    def allocate(tau: float) -> Params:
        params = dict(identity)
        for name, row in sensitivity.items():
            p = space.params.get(name)
            if p is None:
                continue
            for level in reversed(p.levels()):  # most compressing first
                m = row.get(repr(float(level)))
                if m is not None and ok(m, tau):
                    params[name] = level
                    break
        return params

    taus = sorted({m for row in sensitivity.values() for m in row.values()},
                  reverse=higher_is_better)  # strictest (least compression) first
    first = _bisect_first_true(len(taus), lambda i: feasible(allocate(taus[i])))
    if first is None:
        return
    seen: set[str] = set()
    for tau in taus[first:]:
        params = allocate(tau)
        key = _params_digest(space, params)
        if key in seen:
            continue
        seen.add(key)
        if feasible(params):
            yield params
