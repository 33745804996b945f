"""Budget filling: move a sampled candidate to the edge of the budget before it is trained.

Accuracy falls with compression, so the best candidate under a budget uses all of
it. A sampler's proposals mostly miss that edge: many land far inside the budget,
over-compressed, and many over it, never trained. As AMC clips each action so that the whole
model lands on its resource budget, a proposal here is moved along the line from
the uncompressed model through the proposal to a corner of the space (the most
compressed point when the budget admits it, else the first corner that the budget
admits: on a latency target a pruned, dense corner can be faster than the most
compressed one), to the least compressed point of that line the cost model predicts within
budget (bisection on a grid of :data:`STEPS` points each side; the screen's constraints
carry the judge's guard, so the edge sits that far under a latency limit); then every knob
the budget does not need is set back to its uncompressed value, one at a time
(under a latency budget: weight bits and sparsity, which a dense runtime does not
run faster); last, the slack the line's whole-level moves left is used up one level
at a time, every knob in turn. The proposal's *shape* (which layers give up how
much, relative to each other) stays the sampler's; how far it goes is the budget's.
A proposal whose edge point was evaluated before is moved to a new neighbour of that
point on the edge (one knob a level further, the slack given to the others; or a knob the
budget does not need a level further), so the fine-tune goes to a policy not yet tried.

Only the sampled strategies are filled (``tpe`` in ``constrained`` mode, see
``SearchConfig.fill_budget``): the baselines run as they are defined, and a Pareto
search wants candidates away from the edge too. The trial keeps the sampler's
parameters (so the sampler learns the value of what it proposed, through the
filling, which is a fixed function of them); the evaluated, recorded and exported
policy is the filled one, with ``provenance.fill`` saying how it was moved.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autocompress.space import ResolvedSpace

Params = dict[str, Any]
# Grid points between the uncompressed model and the proposal (and again between the
# proposal and the corner): 4-5 cost predictions by bisection, the edge found to 1/16.
STEPS = 16


@dataclass(frozen=True)
class Filled:
    """A proposal moved to the budget's edge.

    ``position``: where on the line it landed (0 = uncompressed, 1 = as proposed,
    2 = the line's corner, see :func:`fill_to_budget`); ``relaxed``: knobs set back to
    uncompressed afterwards; ``stepped_back``: single-level steps back taken to use the
    slack the line's whole-level moves left; ``predictions``: cost predictions it took;
    ``neighbour``: the knobs given up on the walk away from the edge point, comma-separated
    in order, because that point had been evaluated already (:func:`_neighbour`); None
    when the edge point was new.
    """

    params: Params
    position: float
    relaxed: tuple[str, ...]
    predictions: int
    stepped_back: int = 0
    neighbour: str | None = None

    def summary(self) -> dict[str, Any]:
        """What the trial's provenance records."""
        out: dict[str, Any] = {"position": round(self.position, 4), "relaxed": list(self.relaxed),
                               "stepped_back": self.stepped_back, "predictions": self.predictions}
        if self.neighbour is not None:
            out["neighbour"] = self.neighbour
        return out


def _first_true(points: list[float], pred: Callable[[float], bool]) -> float | None:
    """Smallest point where the (assumed monotone) ``pred`` holds, by bisection; None if none."""
    if not pred(points[-1]):
        return None
    lo, hi = 0, len(points) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(points[mid]):
            hi = mid
        else:
            lo = mid + 1
    return points[lo]


def line_point(space: ResolvedSpace, params: Params, t: float,
               corner: Params | None = None) -> Params:
    """The point ``t`` of the line through ``params``: 0 uncompressed, 1 ``params``, 2 the corner.

    Each knob moves by level index, rounded half up. ``corner``: the line's far end (default
    the space's most compressed point); past ``params`` a knob moves toward its value there,
    which may be less compressed than the proposal's (a fast corner keeps dense ranks).

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> from autocompress.space import SearchSpace
    >>> sp = SearchSpace.embedded("digits").resolve(build_inventory(DigitsCNN(),
    ...                                                              torch.zeros(1, 1, 8, 8)))
    >>> p = {**sp.identity_params(), "features.2/prune": 0.4}
    >>> [line_point(sp, p, t)["features.2/prune"] for t in (0, 0.5, 1, 2)]
    [0.0, 0.2, 0.4, 0.75]
    """
    out = {}
    for name, spec in space.params.items():
        levels = spec.levels()
        s = levels.index(spec.snap(params[name]))  # a sampled float may sit off the grid
        end = len(levels) - 1 if corner is None else levels.index(spec.snap(corner[name]))
        i = t * s if t <= 1 else s + (t - 1) * (end - s)
        out[name] = levels[min(int(i + 0.5), len(levels) - 1)]
    return out


# Knobs that change a layer's weight values, not its shapes: each of their levels is another
# model even where the budget's costs stay the same (a pruning level may round to the
# channels of the one before).
VALUE_KNOBS = ("bits", "sparsity")
# The budget's constraints of a parameter dict: ``(within budget, {constraint: excess})``,
# excess <= 0 where it holds (Objective.screen_fill).
Screen = Callable[[Params], tuple[bool, dict[str, float]]]
IsNew = Callable[[Params], bool]


def fill_to_budget(space: ResolvedSpace, params: Params, screen: Screen,
                   steps: int = STEPS, margins: dict[str, float] | None = None,
                   is_new: IsNew | None = None, rng: random.Random | None = None,
                   corner: Params | None = None) -> Filled | None:
    """``params`` moved to the least compressed point of its line that the budget accepts.

    ``screen(params)`` returns ``(feasible, {clause: cost / limit - 1})`` (what
    :meth:`Objective.screen <autocompress.engine.objective.Objective.screen>` predicts).
    After the move, a knob goes back to uncompressed only when that leaves every
    clause's cost as it was: a knob the budget needs stays where the line put it.
    ``margins``: ``{clause: fraction}`` a clause's constraint must stay under 0 by
    (default none: :meth:`Objective.screen` already shifts latency by the judge's guard).
    ``is_new(params)``: whether a point has not been evaluated yet. When the edge point
    has been, a neighbour of it that has not is returned instead (:func:`_neighbour`,
    knobs tried in ``rng``'s order); when none is found, the edge point.
    ``corner``: the line's far end (:func:`line_point`; default the space's most compressed
    point). On a latency target the most compressed point is not always the fastest: a
    low rank adds a matrix product, and a line ending there can miss a budget that a
    pruned, dense corner meets.
    Returns None when not even the line's corner is feasible (the caller then
    evaluates the proposal as it is: it is screened out as over the budget).

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> from autocompress.space import SearchSpace
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> sp = SearchSpace.embedded("digits").resolve(inv)
    >>> proposal = {**sp.identity_params(), "features.2/prune": 0.6, "classifier.1/bits": 4}
    >>> # a budget that only asks features.2 to drop 30% of its channels
    >>> def screen(p):
    ...     return p["features.2/prune"] >= 0.3, {"prune": 0.3 - p["features.2/prune"]}
    >>> filled = fill_to_budget(sp, proposal, screen)
    >>> filled.params["features.2/prune"], filled.params["classifier.1/bits"], filled.relaxed
    (0.3, 32, ('classifier.1/bits',))
    """
    levels = {name: p.levels() for name, p in space.params.items()}
    margins = {} if margins is None else margins
    memo: dict[tuple[tuple[str, Any], ...], tuple[bool, dict[str, float]]] = {}

    def predicted(candidate: Params) -> tuple[bool, dict[str, float]]:
        key = tuple(sorted(candidate.items()))
        if key not in memo:
            feasible, constraints = screen(candidate)
            memo[key] = (bool(feasible), dict(constraints))
        return memo[key]

    def meets(candidate: Params, need: dict[str, float]) -> bool:
        feasible, constraints = predicted(candidate)
        return feasible and all(constraints[k] <= -m for k, m in need.items()
                                if k in constraints)

    def edge(need: dict[str, float]) -> float | None:
        def ok(t: float) -> bool:
            return meets(line_point(space, params, t, corner), need)

        if ok(1.0):
            return _first_true([i / steps for i in range(steps + 1)], ok)
        return _first_true([1 + i / steps for i in range(steps + 1)], ok)

    need = margins
    t = edge(need)
    if t is None and need:  # the corner meets the budget, but not with the margin
        need = {}
        t = edge(need)
    if t is None:
        return None
    filled = line_point(space, params, t, corner)
    relaxed = []
    for name in sorted(filled):  # a fixed order: the same proposal is always filled the same
        identity = levels[name][0]
        if filled[name] == identity:
            continue
        trial = {**filled, name: identity}
        if _same_costs(predicted(trial)[1], predicted(filled)[1]):
            filled = trial
            relaxed.append(name)
    filled, stepped = _use_slack(filled, levels, lambda c: meets(c, need))
    moved = None
    if is_new is not None and not is_new(filled):
        found = _neighbour(filled, levels, lambda c: meets(c, need), is_new,
                           lambda a, b: _same_costs(predicted(a)[1], predicted(b)[1]),
                           rng or random.Random(0))
        if found is not None:
            moved, filled = found
    return Filled(params=filled, position=t, relaxed=tuple(relaxed), predictions=len(memo),
                  stepped_back=stepped, neighbour=moved)


def _neighbour(params: Params, levels: dict[str, list[Any]], meets: Callable[[Params], bool],
               is_new: IsNew, same_costs: Callable[[Params, Params], bool],
               rng: random.Random) -> tuple[str, Params] | None:
    """A new point next to ``params`` on the budget's edge, or a step further inside it.

    Filling maps many proposals onto one edge point, and a small space holds few of them:
    without a walk, filling ends after a few repeats and the proposals drawn as they are
    after that mostly land over the budget, each a sampler call for nothing. So the
    point walks instead (:func:`_walk`), first over the knobs the budget needs, each step
    one of them a level further with the slack handed to the others (on the edge, then
    inside it once the edge's neighbours are taken); when that walk reaches the corner,
    over the knobs it does not need (under a latency budget weight bits and sparsity: the
    edge point's costs, a policy not trained yet). Returns ``(knobs given up, point)``.
    """
    def changes_costs(name: str, a: Params, b: Params) -> bool:
        return not same_costs(a, b)

    def free(name: str, a: Params, b: Params) -> bool:  # a different model at the same costs
        return name.rsplit("/", 1)[-1] in VALUE_KNOBS and same_costs(a, b)

    return (_walk(params, levels, meets, is_new, changes_costs, rng)
            or _walk(params, levels, meets, is_new, free, rng))


def _walk(params: Params, levels: dict[str, list[Any]], meets: Callable[[Params], bool],
          is_new: IsNew, movable: Callable[[str, Params, Params], bool], rng: random.Random
          ) -> tuple[str, Params] | None:
    """Give up a ``movable`` move of one knob at a time until a new point is found.

    Each step tries every knob in ``rng``'s order at its next level that ``movable(knob,
    point, current)`` accepts (a pruning level that rounds to the same channels as the
    last changes no cost, so the next one is taken), with
    :func:`_use_slack` handing what that freed to the knobs not given up so far; the first
    point ``is_new`` accepts is returned. When none is, the walk goes on from the first
    knob's point. None when no movable knob can move further.
    """
    given: list[str] = []  # knobs given up so far, in order (one may come more than once)
    current = params
    while True:
        names = sorted(current)
        rng.shuffle(names)
        deeper: tuple[str, Params] | None = None
        for name in names:
            i = levels[name].index(current[name])
            tighter = next((t for t in ({**current, name: v} for v in levels[name][i + 1:])
                            if movable(name, t, current)), None)
            if tighter is None or not meets(tighter):
                continue  # costs need not fall with every knob (int8 fusion)
            point, _ = _use_slack(tighter, levels, meets, keep={*given, name})
            if is_new(point):
                return ",".join([*given, name]), point
            deeper = deeper or (name, tighter)
        if deeper is None:
            return None
        given.append(deeper[0])
        current = deeper[1]


def _use_slack(params: Params, levels: dict[str, list[Any]], meets: Callable[[Params], bool],
               keep: set[str] | None = None) -> tuple[Params, int]:
    """Step knobs back one level at a time, in turn, while the budget still holds.

    The line moves every knob by whole levels, so its last feasible point can sit far
    inside the budget: a rank going from 0.25 to 0.5 of a layer's is one step. Each pass
    gives every knob one level back if the budget allows it, in a fixed order, so the
    slack is shared across layers rather than spent on the first; a knob that cannot
    move once cannot later either (the others only grow the cost), so it is left out; so
    are the knobs in ``keep``. Returns the params and how many steps back were taken.
    """
    stuck: set[str] = set(keep or ())
    steps = 0
    while True:
        moved = False
        for name in sorted(params):
            if name in stuck:
                continue
            i = levels[name].index(params[name])  # filled values are levels already
            if i == 0:
                stuck.add(name)
                continue
            candidate = {**params, name: levels[name][i - 1]}
            if meets(candidate):
                params, moved, steps = candidate, True, steps + 1
            else:
                stuck.add(name)
        if not moved:
            return params, steps


def _same_costs(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two screenings put every budget clause at the same cost."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-9 for k in a)
