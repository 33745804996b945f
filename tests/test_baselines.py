"""The baselines' candidate sequences, on the real digits space and analytic costs (no training)."""

from __future__ import annotations

import itertools

from autocompress.cost import analytic_costs, parse_budget
from autocompress.engine.baselines import uniform_candidates
from autocompress.engine.taken import policy_digest
from autocompress.inventory import build_inventory
from autocompress.space import SearchSpace


def test_uniform_candidates_are_distinct_policies(digits_task):
    """A rank fraction above a pruned layer's break-even factorises nothing, so different
    uniform settings can make one policy; the baseline yields each policy once."""
    inv = build_inventory(digits_task.model, digits_task.example_input)
    space = SearchSpace.embedded("digits").resolve(inv)
    budget, base = parse_budget("size<=15%"), analytic_costs(None, inv)

    def feasible(params):
        return budget.check(analytic_costs(space.policy_from_params(params), inv), base)[0]

    same = [space.policy_from_params(space.uniform_params(prune=0.65, rank_fraction=r, bits=32))
            for r in (1.0, 0.5)]
    assert policy_digest(same[0].to_dict()) == policy_digest(same[1].to_dict())  # one policy, two dicts
    candidates = list(itertools.islice(uniform_candidates(space, feasible), 40))
    keys = [policy_digest(space.policy_from_params(p).to_dict()) for p in candidates]
    assert len(candidates) == 40 and len(set(keys)) == len(keys)
    assert all(feasible(p) for p in candidates)
