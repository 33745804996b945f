"""Refining the uniform warm start: its slack spent on the layers its compression hurts most.

The uniform warm start (:func:`~autocompress.engine.baselines.uniform_starts`) often
meets the budget with room to spare: 8-bit weights and inputs on every Linear layer of
all-MiniLM-L6-v2 run at 0.41x its latency, under a budget of 0.6x. A uniform setting cannot use
that room; a sampler's first draws rarely find it among 150 knobs. As mixed-precision
allocators do (AIMET's and Model Optimizer's per-layer sensitivities), each layer is given back
one level of each of its compressed knobs alone, the model is scored without a fine-tune, and
the layers whose scores gain most per unit of budget are given back while the budget holds.
At most :data:`MAX_SCORED_MOVES` layers are scored, those whose moves use least budget.
The result is the sampled search's second planned trial.

On the target the packed point is then timed, and the last layers given back are taken
away again until it meets the budget (:func:`walk_back`): predictions place it, a
measurement decides, as for every candidate. Away from the target it is packed one spread
of the corrected predictions under the limit instead.

Pure given its scores and timings: a resumed run does not compute it again (the study
holds the trial).
"""

from __future__ import annotations

from collections.abc import Callable

from autocompress.engine.fill import Params, Screen
from autocompress.space import ResolvedSpace


def layer_moves(space: ResolvedSpace, start: Params) -> dict[str, Params]:
    """``{layer: params}``: per layer, each of its compressed knobs one level less compressed.

    >>> import torch
    >>> from autocompress.derived_space import derive_space
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> sp = derive_space(inv).resolve(inv)
    >>> moves = layer_moves(sp, sp.uniform_params(prune=0.0, bits=8, act_bits=8))
    >>> sorted(moves)
    ['net.1', 'net.3', 'net.5']
    >>> moves["net.1"]
    {'net.1/bits': 32, 'net.1/act_bits': 32}
    """
    moves: dict[str, Params] = {}
    built = space.policy_from_params(start).layers
    for name, spec in space.params.items():
        levels = spec.levels()
        # The nearest less compressed level that builds another model: neighbouring prune
        # ratios can keep the same channel blocks.
        for level in reversed(levels[:levels.index(spec.snap(start[name]))]):
            if space.policy_from_params({**start, name: level}).layers != built:
                moves.setdefault(name.rsplit("/", 1)[0], {})[name] = level
                break
    return moves


# Moves scored at most. Each score applies the whole policy: DenseNet-161's 160 layers at
# ~8 s each took over 20 minutes before a trial ran. 48 still scores every layer of
# all-MiniLM-L6-v2 (36) and ResNet-18 (20), the refinement's benchmarked models.
MAX_SCORED_MOVES = 48


def spend_slack(
    start: Params,
    moves: dict[str, Params],
    screen: Screen,
    score: Callable[[Params], float],
    higher_is_better: bool = True,
    progress: Callable[[int, int], None] | None = None,
    limit: int = MAX_SCORED_MOVES,
) -> tuple[Params, list[str]] | None:
    """``start`` with layers given back a level (their ``moves``, :func:`layer_moves`) while
    ``screen`` holds, and which ones in the order taken; None when no layer's move fits the
    budget or gains.

    Only moves that fit the budget alone are scored (``score``: the metric without a
    fine-tune), so a start at the budget's edge costs predictions only, and of those at most
    ``limit``, the ones that use least of the budget: moves are taken by gain per unit of
    the tightest constraint they use, best first, so among like gains the cheapest lead.
    Each is taken while the budget still holds with the ones taken before.

    >>> start = {"a/bits": 8, "b/bits": 8}
    >>> moves = {layer: {f"{layer}/bits": 32} for layer in "ab"}
    >>> def one_float_layer(p):  # a budget with room for one layer at float
    ...     floats = sum(v == 32 for v in p.values())
    ...     return floats <= 1, {"size": floats - 1.0}
    >>> def score(p):  # b loses more to 8 bits than a
    ...     return 0.9 + 0.05 * (p["a/bits"] == 32) + 0.08 * (p["b/bits"] == 32)
    >>> spend_slack(start, moves, one_float_layer, score)
    ({'a/bits': 8, 'b/bits': 32}, ['b'])
    >>> spend_slack(start, moves, one_float_layer, score, limit=1)  # a and b use alike: a
    ({'a/bits': 32, 'b/bits': 8}, ['a'])
    """
    ok, base_constraints = screen(start)
    if not ok:
        return None
    used0 = max(base_constraints.values(), default=0.0)
    fitting: list[tuple[str, Params, float]] = []
    for layer, move in moves.items():
        fits, constraints = screen({**start, **move})
        if fits:
            fitting.append((layer, move, max(constraints.values(), default=0.0) - used0))
    if not fitting:
        return None
    fitting = sorted(fitting, key=lambda f: f[2])[:limit]  # stable: module order among ties
    base = score(start)
    ranked: list[tuple[float, str, Params]] = []
    for i, (layer, move, used) in enumerate(fitting):
        metric = score({**start, **move})
        gain = metric - base if higher_is_better else base - metric
        if gain > 0:
            # A move that uses none of the budget (or frees some) goes first.
            ranked.append((gain / used if used > 1e-12 else float("inf"), layer, move))
        if progress:
            progress(i + 1, len(fitting))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    current, taken = dict(start), list[str]()
    for _, layer, move in ranked:
        candidate = {**current, **move}
        if screen(candidate)[0]:
            current, taken = candidate, [*taken, layer]
    return (current, taken) if taken else None


def walk_back(start: Params, moves: dict[str, Params], given_back: list[str],
              meets: Callable[[Params], bool]) -> tuple[Params, list[str]] | None:
    """The longest prefix of ``given_back`` (layers, in the order :func:`spend_slack` took
    them) whose ``moves`` (:func:`layer_moves`) on ``start`` ``meets`` accepts, trying the
    longest first; None when not even the first layer's move does.

    >>> start = {"a/bits": 8, "b/bits": 8, "c/bits": 8}
    >>> moves = {layer: {f"{layer}/bits": 32} for layer in "abc"}
    >>> def one_float_layer(p):  # what a timing allows
    ...     return sum(v == 32 for v in p.values()) <= 1
    >>> walk_back(start, moves, ["c", "a"], one_float_layer)
    ({'a/bits': 8, 'b/bits': 8, 'c/bits': 32}, ['c'])
    """
    for k in range(len(given_back), 0, -1):
        params = dict(start)
        for layer in given_back[:k]:
            params.update(moves[layer])
        if meets(params):
            return params, given_back[:k]
    return None
