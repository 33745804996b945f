"""Budget filling: proposals moved to the budget's edge, with the real space and cost model."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autocompress.cost import analytic_costs, parse_budget
from autocompress.engine import search
from autocompress.engine.fill import STEPS, fill_to_budget, line_point
from autocompress.inventory import build_inventory
from autocompress.space import SearchSpace


def _setup(digits_task, budget: str):
    inv = build_inventory(digits_task.model, digits_task.example_input)
    space = SearchSpace.embedded("digits").resolve(inv)
    parsed, base = parse_budget(budget), analytic_costs(None, inv)

    def screen(params):
        return parsed.check(analytic_costs(space.policy_from_params(params), inv), base)

    return space, inv, screen


def test_a_proposal_with_room_to_spare_is_moved_back_to_the_edge(digits_task):
    space, inv, screen = _setup(digits_task, "macs<=50%")
    proposal = {**space.smallest_params(), "features.2/bits": 4}  # far under 50% of the MACs
    filled = fill_to_budget(space, proposal, screen)
    assert filled is not None and 0 < filled.position < 1
    assert screen(filled.params)[0]
    # the edge: a grid step less compressing along the same line is over the budget
    assert not screen(line_point(space, proposal, filled.position - 1 / STEPS))[0]
    # knobs the MACs budget does not need are set back to uncompressed; the ones it needs not
    assert filled.params["features.2/bits"] == 32 and "features.2/bits" in filled.relaxed
    assert not any(name.endswith("/prune") for name in filled.relaxed)
    # and no slack is left: no knob can give back one more level within the budget
    for name, spec in space.params.items():
        levels = spec.levels()
        i = levels.index(filled.params[name])
        if i > 0:
            assert not screen({**filled.params, name: levels[i - 1]})[0], name
    smallest = analytic_costs(space.policy_from_params(proposal), inv).macs
    assert analytic_costs(space.policy_from_params(filled.params), inv).macs > 2 * smallest
    # a fixed function of the proposal: the sampler learns what its proposals become
    assert fill_to_budget(space, proposal, screen) == filled


def test_a_proposal_over_the_budget_is_compressed_until_it_meets_it(digits_task):
    space, inv, screen = _setup(digits_task, "macs<=40%")
    proposal = {**space.identity_params(), "features.2/prune": 0.1}
    assert not screen(proposal)[0]
    filled = fill_to_budget(space, proposal, screen)
    assert filled is not None and 1 < filled.position <= 2 and screen(filled.params)[0]
    macs = analytic_costs(space.policy_from_params(filled.params), inv).macs
    assert 0.3 * analytic_costs(None, inv).macs < macs <= 0.4 * analytic_costs(None, inv).macs
    # a budget not even the space's corner meets: nothing to fill, the caller screens it out
    space, _, impossible = _setup(digits_task, "macs<=0.01%")
    assert fill_to_budget(space, proposal, impossible) is None


def test_an_edge_point_evaluated_before_is_moved_to_a_new_neighbour(digits_task):
    """Filling maps proposals onto few edge points: a taken one walks to one no trial has had."""
    import random

    space, inv, screen = _setup(digits_task, "macs<=50%")
    proposal = {**space.smallest_params(), "features.2/bits": 4}
    edge = fill_to_budget(space, proposal, screen)
    assert edge is not None and edge.neighbour is None
    seen = [edge.params]
    for _ in range(6):  # each evaluated point is avoided by the next fill of the same proposal
        moved = fill_to_budget(space, proposal, screen, is_new=lambda p: p not in seen,
                               rng=random.Random(len(seen)))
        assert moved is not None and moved.neighbour is not None
        assert moved.params not in seen and screen(moved.params)[0]
        # only knobs the budget needs are given up: weight bits stay uncompressed
        assert moved.params["features.2/bits"] == 32
        assert all(name.endswith(("/prune", "/rank")) for name in moved.neighbour.split(","))
        seen.append(moved.params)
    # with every point taken the walk ends at the corner: the edge point, as filled, is kept
    stuck = fill_to_budget(space, proposal, screen, is_new=lambda p: False)
    assert stuck is not None and stuck.neighbour is None and stuck.params == edge.params


def _trials(out):
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    study = optuna.load_study(study_name="autocompress", storage=storage)
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_tpe_trains_filled_policies_and_records_how(digits_task, tmp_path):
    settings = dict(budget="macs<=50%", target="torch-1t", trials=4, finetune_steps=5,
                    export=False, report_every=5, val_samples=100, strategy="tpe")
    search(digits_task, out=tmp_path / "filled", **settings)
    trials = _trials(tmp_path / "filled")
    assert len(trials) == 4 and all(t.user_attrs["feasible"] for t in trials)  # none skipped
    sampled = [t for t in trials if "warm_start" not in t.user_attrs]
    # the uniform warm start is a planned point at the edge: trained as it is, never moved
    (warm,) = [t for t in trials if "warm_start" in t.user_attrs]
    assert "fill" not in warm.user_attrs["policy"]["provenance"]
    for t in sampled:
        fill = t.user_attrs["policy"]["provenance"]["fill"]
        assert fill["predictions"] >= 2 and 0 < fill["position"] <= 2
    # the trial keeps the sampler's parameters; the trained policy is the filled one
    space = SearchSpace.embedded("digits").resolve(
        build_inventory(digits_task.model, digits_task.example_input))
    assert any(space.policy_from_params(t.params).layers != _layers(t) for t in sampled)
    search(digits_task, out=tmp_path / "drawn", fill_budget=False, **settings)
    assert not any("fill" in t.user_attrs["policy"]["provenance"]
                   for t in _trials(tmp_path / "drawn"))
    search(digits_task, out=tmp_path / "random", **{**settings, "strategy": "random"})
    assert not any("fill" in t.user_attrs["policy"]["provenance"]  # baselines run as defined
                   for t in _trials(tmp_path / "random"))


def _layers(trial):
    from autocompress.policy import CompressionPolicy

    return CompressionPolicy.from_dict(trial.user_attrs["policy"]).layers


def test_a_predicted_latency_is_filled_to_the_guard_under_its_limit(digits_task):
    """The judge tells latency constraints shifted by its guard, so a proposal filled to them
    sits MEASURED_GUARD under the limit, as a timing must to meet it (a MACs clause posing as
    latency, so the numbers are exact)."""
    from autocompress.engine.judge import MEASURED_GUARD

    # 40%: a limit the digits grid has a policy within the guard of (its convs prune in
    # steps of 16 channels: the nearest policies under 50% sit 17% under it).
    space, _, screen = _setup(digits_task, "macs<=40%")

    def as_latency(params, guard=MEASURED_GUARD):
        _, constraints = screen(params)
        told = constraints["macs"] + guard
        return told <= 0, {"latency": told}

    proposal = space.smallest_params()
    guarded = fill_to_budget(space, proposal, as_latency)
    exact = fill_to_budget(space, proposal, lambda p: as_latency(p, 0.0))
    assert guarded is not None and exact is not None
    assert as_latency(guarded.params, 0.0)[1]["latency"] <= -MEASURED_GUARD
    assert -MEASURED_GUARD < as_latency(exact.params, 0.0)[1]["latency"] <= 0


def test_filled_proposals_walk_to_new_policies_instead_of_repeating_one(digits_mlp_task,
                                                                         tmp_path):
    """Under ``macs<=40%`` the MLP's edge holds 4 policies (its ranks): proposals filled onto a
    trained one walk on, to knobs the budget does not need, and none is skipped or repeated."""
    from autocompress.engine.optuna_backend import evaluated
    from autocompress.engine.taken import policy_digest

    search(digits_mlp_task, out=tmp_path / "mlp", budget="macs<=40%", target="torch-1t",
           trials=8, finetune_steps=5, export=False, report_every=5, val_samples=100,
           strategy="tpe", seed=0)
    trials = _trials(tmp_path / "mlp")
    assert len(trials) == 8 and all(evaluated(t) for t in trials)  # no TPE ask wasted
    fills = [t.user_attrs["policy"]["provenance"].get("fill") for t in trials]
    keys = [policy_digest(t.user_attrs["policy"]) for t in trials]
    assert len(set(keys)) == len(keys)  # every fine-tune trained a policy not trained before
    walked = [f["neighbour"] for f in fills if f and "neighbour" in f]
    assert any(knob.endswith("/rank") for w in walked for knob in w.split(","))
    assert any(knob.endswith(("/bits", "/sparsity")) for w in walked for knob in w.split(","))


def test_a_filled_proposal_with_nowhere_left_to_walk_is_not_trained_again(digits_mlp_task,
                                                                          tmp_path):
    """A ranks-only space: once the walk reaches the corner, a filled proposal landing on a
    trained policy is told that trial's outcome, and after MAX_REPEATS_IN_A_ROW in a row
    filling stops."""
    from autocompress.engine.optuna_backend import evaluated
    from autocompress.engine.taken import policy_digest
    from autocompress.engine.trial import MAX_REPEATS_IN_A_ROW

    space = tmp_path / "ranks.yaml"
    space.write_text("schema_version: 1\ndefaults: {}\nrules:\n"
                     "  - match: {output: true}\n    bits: {choices: [32]}\n"
                     "  - match: {kind: Linear}\n    rank: {choices: [0.125, 0.25, 0.5, 1.0]}\n")
    search(digits_mlp_task, out=tmp_path / "mlp", budget="macs<=40%", target="torch-1t",
           trials=8, finetune_steps=5, export=False, report_every=5, val_samples=100,
           strategy="tpe", seed=0, space=str(space))
    trials = _trials(tmp_path / "mlp")
    done = [t for t in trials if evaluated(t)]
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert 0 < len(done) <= 8  # repeats do not count toward --trials
    assert repeats, "a ranks-only MLP space holds fewer policies under macs<=40% than 8 trials"
    by_number = {t.number: t for t in trials}
    for r in repeats:
        first = by_number[r.user_attrs["repeat_of"]]
        assert first.user_attrs["metric"] is not None and r.values == first.values
        assert r.user_attrs["policy"]["layers"] == first.user_attrs["policy"]["layers"]
        assert r.user_attrs["finetune_s"] == 0  # told, not fine-tuned
    # every filled policy fine-tuned is a new one; once filling repeated itself
    # MAX_REPEATS_IN_A_ROW times in a row, it stopped and proposals were evaluated as drawn
    filled = [policy_digest(t.user_attrs["policy"]) for t in done
              if "fill" in t.user_attrs["policy"]["provenance"]]
    assert len(set(filled)) == len(filled)
    as_drawn = [t for t in trials if t.number > repeats[-1].number]
    assert not any("fill" in t.user_attrs["policy"]["provenance"] for t in as_drawn)
    last = [r.number for r in repeats[-MAX_REPEATS_IN_A_ROW:]]
    assert last == list(range(last[-1] - MAX_REPEATS_IN_A_ROW + 1, last[-1] + 1))


def test_the_line_ends_at_the_corner_given_so_a_fast_corner_can_be_reached(digits_task):
    """On a latency target the most compressed point can be the slowest corner (a low rank
    adds a matrix product). A budget only a pruned, dense corner meets: the line to the most
    compressed point finds nothing, the line to that corner finds the edge."""
    space, _, _ = _setup(digits_task, "macs<=50%")

    def screen(p):  # "fast" only with features.2 pruned by half and left dense
        slow = p["features.2/rank"] < 1.0
        return (p["features.2/prune"] >= 0.5 and not slow,
                {"latency": 0.5 - p["features.2/prune"] + (1.0 if slow else 0.0)})

    proposal = {**space.identity_params(), "features.2/prune": 0.2, "features.2/rank": 0.25}
    assert fill_to_budget(space, proposal, screen) is None  # the smallest policy is "slow"
    corner = {**space.smallest_params(), "features.2/rank": 1.0}
    filled = fill_to_budget(space, proposal, screen, corner=corner)
    assert filled is not None and screen(filled.params)[0] and 1 < filled.position <= 2
    # dense, and pruned to the edge
    assert filled.params["features.2/rank"] == 1.0 and filled.params["features.2/prune"] == 0.5
    assert line_point(space, proposal, 2, corner)["features.2/rank"] == 1.0
    assert line_point(space, proposal, 2)["features.2/rank"] == 0.125
