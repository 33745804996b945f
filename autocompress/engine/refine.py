"""Refining the uniform warm start: its slack spent on the layers its compression hurts most.

The uniform warm start (:func:`~autocompress.engine.baselines.uniform_starts`) often
meets the budget with room to spare: 8-bit weights and inputs on every Linear layer of
all-MiniLM-L6-v2 run at 0.41x its latency, under a budget of 0.6x. A uniform setting cannot use
that room; a sampler's first draws rarely find it among 150 knobs. As mixed-precision
allocators do (AIMET's and Model Optimizer's per-layer sensitivities), each layer is given back
one level of each of its compressed knobs alone, the model is scored without a fine-tune
(:func:`rank_moves`), and the layers whose scores gain most per unit of budget are given
back while the budget holds, unless leading with the single largest gain sums to more
(:func:`pack`). At most :data:`MAX_SCORED_MOVES` layers are
scored, those whose moves use least budget. The result is the sampled search's second
planned trial.

On the target the packed point is then timed, and packed again under the line through the
start's timing and its own until one meets the budget (:func:`place_timed`): predictions
place it, a measurement decides, as for every candidate. Away from the target it is packed
one spread of the corrected predictions under the limit instead.

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


def rank_moves(
    start: Params,
    moves: dict[str, Params],
    screen: Screen,
    score: Callable[[Params], float],
    higher_is_better: bool = True,
    progress: Callable[[int, int], None] | None = None,
    limit: int = MAX_SCORED_MOVES,
) -> dict[str, float]:
    """``{layer: gain}`` of the layers whose ``moves`` (:func:`layer_moves`) fit the budget
    alone on ``start`` and gain, best gain per unit of the budget first; empty when ``start``
    misses ``screen``.

    Only moves that fit alone are scored (``score``: the metric without a fine-tune), so a
    start at the budget's edge costs predictions only, and of those at most ``limit``, the
    ones that use least of the tightest constraint: among like gains the cheapest lead.

    >>> start = {"a/bits": 8, "b/bits": 8}
    >>> moves = {layer: {f"{layer}/bits": 32} for layer in "ab"}
    >>> def one_float_layer(p):  # a budget with room for one layer at float
    ...     floats = sum(v == 32 for v in p.values())
    ...     return floats <= 1, {"size": floats - 1.0}
    >>> def score(p):  # b loses more to 8 bits than a
    ...     return 0.9 + 0.05 * (p["a/bits"] == 32) + 0.08 * (p["b/bits"] == 32)
    >>> {k: round(v, 2) for k, v in rank_moves(start, moves, one_float_layer, score).items()}
    {'b': 0.08, 'a': 0.05}
    >>> list(rank_moves(start, moves, one_float_layer, score, limit=1))  # a and b use alike: a
    ['a']
    """
    ok, base_constraints = screen(start)
    if not ok:
        return {}
    used0 = max(base_constraints.values(), default=0.0)
    fitting: list[tuple[str, Params, float]] = []
    for layer, move in moves.items():
        fits, constraints = screen({**start, **move})
        if fits:
            fitting.append((layer, move, max(constraints.values(), default=0.0) - used0))
    fitting = sorted(fitting, key=lambda f: f[2])[:limit]  # stable: module order among ties
    base = score(start) if fitting else 0.0
    ranked: list[tuple[float, str, float]] = []
    for i, (layer, move, used) in enumerate(fitting):
        metric = score({**start, **move})
        gain = metric - base if higher_is_better else base - metric
        if gain > 0:
            # A move that uses none of the budget (or frees some) goes first.
            ranked.append((gain / used if used > 1e-12 else float("inf"), layer, gain))
        if progress:
            progress(i + 1, len(fitting))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    return {layer: gain for _, layer, gain in ranked}


def pack(start: Params, moves: dict[str, Params], ranked: dict[str, float],
         screen: Screen) -> tuple[Params, list[str]] | None:
    """``start`` with the ``ranked`` layers' ``moves`` (:func:`rank_moves`: ``{layer: gain}``,
    best gain per unit of budget first) taken in order, each while ``screen`` still holds
    with those taken before, and the layers taken; None when none is.

    The order is tried twice: as ranked, and led by the largest gain. The packing whose
    gains sum to more is kept, so one large gain that uses much of the budget is not
    crowded out by cheap small ones (the greedy rule of a knapsack, kept within half of
    the best packing).

    >>> start = {"a/bits": 8, "b/bits": 8, "c/bits": 8}
    >>> moves = {layer: {f"{layer}/bits": 32} for layer in "abc"}
    >>> def two_float_layers_not_c_with_a(p):
    ...     floats = sum(v == 32 for v in p.values())
    ...     ok = floats <= 2 and not (p["a/bits"] == p["c/bits"] == 32)
    ...     return ok, {"size": floats - 2.0}
    >>> gains = {"c": 0.03, "a": 0.02, "b": 0.01}
    >>> pack(start, moves, gains, two_float_layers_not_c_with_a)  # a is skipped
    ({'a/bits': 8, 'b/bits': 32, 'c/bits': 32}, ['c', 'b'])
    >>> def c_alone_or_a_with_b(p):  # c uses the whole budget
    ...     ok = p["c/bits"] == 8 or p["a/bits"] == p["b/bits"] == 8
    ...     return ok, {"size": 0.0}
    >>> pack(start, moves, {"a": 0.02, "b": 0.02, "c": 0.05}, c_alone_or_a_with_b)
    ({'a/bits': 8, 'b/bits': 8, 'c/bits': 32}, ['c'])
    """
    orders = [list(ranked)]
    largest = max(ranked, key=ranked.__getitem__, default=None)
    if largest is not None and largest != orders[0][0]:
        orders.append([largest, *(layer for layer in ranked if layer != largest)])
    packings = [p for p in (_pack_in_order(start, moves, order, screen) for order in orders)
                if p is not None]
    return max(packings, key=lambda p: sum(ranked[layer] for layer in p[1]), default=None)


def _pack_in_order(start: Params, moves: dict[str, Params], order: list[str],
                   screen: Screen) -> tuple[Params, list[str]] | None:
    """:func:`pack` of one order."""
    current, taken = dict(start), list[str]()
    for layer in order:
        candidate = {**current, **moves[layer]}
        if screen(candidate)[0]:
            current, taken = candidate, [*taken, layer]
    return (current, taken) if taken else None


# Timed packings of the refined start at most (MiniLM: ~30 s each, two readings).
MAX_PLACEMENTS = 4


def place_timed(start: Params, moves: dict[str, Params], ranked: dict[str, float],
                screen_after: Callable[[Params | None], Screen], meets: Callable[[Params], bool],
                tries: int = MAX_PLACEMENTS) -> tuple[Params, list[str]] | None:
    """:func:`pack` ``ranked`` on ``start`` under ``screen_after(None)`` (predictions scaled by
    the start's timing), and time the packing (``meets``). When it misses, pack again under
    that screen and ``screen_after(missed)`` (predictions read off the line through the
    start's timing and the missed point's), and so on: every screen so far must accept a
    packing, and from the third packing on it uses only a half, then a quarter of the room
    the start left. None when no packing meets within ``tries``.

    A packing that misses shows what its moves cost on the target. Walking back the order
    the moves were taken in instead dropped every layer after the first one that used much
    of the budget (MiniLM at 0.4x kept only its output layer), where cheaper moves further
    down the order still fit.

    >>> start = {"a/bits": 8, "b/bits": 8, "c/bits": 8}
    >>> moves = {layer: {f"{layer}/bits": 32} for layer in "abc"}
    >>> predicted = {"a/bits": 0.8, "b/bits": 0.6, "c/bits": 0.9}  # a layer at float costs
    >>> true = {**predicted, "c/bits": 1.4}  # the table is wrong about c
    >>> def cost(p, costs):
    ...     return sum(costs[k] for k, v in p.items() if v == 32)
    >>> def screen_after(missed):  # the line through the start (cost 0) and the miss
    ...     slope = 1.0 if missed is None else cost(missed, true) / cost(missed, predicted)
    ...     return lambda p: (cost(p, predicted) * slope <= 2,
    ...                       {"size": cost(p, predicted) * slope / 2 - 1})
    >>> def meets(p):  # a budget of 2
    ...     return cost(p, true) <= 2
    >>> gains = {"c": 0.03, "a": 0.02, "b": 0.01}
    >>> place_timed(start, moves, gains, screen_after, meets)  # c, a misses: c, b
    ({'a/bits': 8, 'b/bits': 32, 'c/bits': 32}, ['c', 'b'])
    >>> def unlucky(p):  # timings that miss every pair: the third packing uses half the room
    ...     return sum(v == 32 for v in p.values()) < 2
    >>> place_timed(start, moves, gains, screen_after, unlucky)
    ({'a/bits': 8, 'b/bits': 32, 'c/bits': 8}, ['b'])
    """
    screens = [screen_after(None)]

    def every_screen(params: Params) -> tuple[bool, dict[str, float]]:
        verdicts = [s(params) for s in screens]
        worst: dict[str, float] = {}
        for _, constraints in verdicts:
            for k, v in constraints.items():
                worst[k] = max(worst.get(k, v), v)
        return all(ok for ok, _ in verdicts), worst

    tried: list[Params] = []
    for attempt in range(tries):
        # A second miss on a line that placed the packing at the limit is the timings' noise:
        # later packings aim at a half, then a quarter of the room the start left.
        room = 0.5 ** max(0, attempt - 1)
        _, at_start = every_screen(start)

        def within(params: Params, room: float = room,
                   at_start: dict[str, float] = at_start) -> tuple[bool, dict[str, float]]:
            ok, constraints = every_screen(params)
            return ok and all(v <= at_start[k] * (1 - room) for k, v in constraints.items()
                              if at_start.get(k, 0.0) < 0), constraints

        packed = pack(start, moves, ranked, within)
        if packed is None or packed[0] in tried:
            return None
        if meets(packed[0]):
            return packed
        tried.append(packed[0])
        screens.append(screen_after(packed[0]))
    return None
