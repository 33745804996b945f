"""Search spaces: the YAML format, validation messages, resolution against real inventories."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from autocompress.errors import SpaceError
from autocompress.inventory import build_inventory
from autocompress.models import DigitsCNN, DigitsMLP, resnet20
from autocompress.space import EMBEDDED, SearchSpace, default_space

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cnn_inv():
    return build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def resnet_inv():
    return build_inventory(resnet20(), torch.zeros(1, 3, 32, 32))


def space(text: str) -> SearchSpace:
    return SearchSpace.from_yaml(text, source="test.yaml")


# ---------------------------------------------------------------- shipped spaces
@pytest.mark.parametrize("name", EMBEDDED)
def test_repo_spaces_equal_the_embedded_copies(name):
    """search_spaces/*.yaml (for people) and the package data (for pip installs) never drift."""
    repo = (REPO / "search_spaces" / f"{name}.yaml").read_text()
    assert SearchSpace.embedded(name).text == repo
    assert SearchSpace.load(REPO / "search_spaces" / f"{name}.yaml").spec == SearchSpace.embedded(
        name).spec


def test_embedded_default_spaces_resolve_on_their_tasks(cnn_inv, resnet_inv):
    mlp = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    digits = default_space("digits").resolve(cnn_inv)
    knobs = {p.knob for p in digits.params.values()}
    assert knobs == {"prune", "rank", "sparsity", "bits"}  # all four knobs
    assert default_space("cifar10-resnet20").resolve(resnet_inv).names
    linear = default_space("digits-mlp").resolve(mlp)
    assert {p.knob for p in linear.params.values()} == {"rank", "bits", "sparsity"}
    # the logits layer (matched by `output: true`, not by name) keeps its rank and 8+ bits
    assert mlp.outputs == ("net.5",)
    assert [n for n in linear.names if n.startswith("net.5/")] == ["net.5/bits"]
    assert set(linear.params["net.5/bits"].distribution.choices) == {8, 32}
    assert "net.3/rank" in linear.names
    assert default_space("torchvision:resnet18").source == "embedded:torchvision_cnn"
    with pytest.raises(SpaceError, match="has no default search space; pass --space"):
        default_space("mypkg.tasks:my_task")
    assert SearchSpace.load("embedded:digits").source == "embedded:digits"


def test_digits_space_parameter_names(cnn_inv):
    r = SearchSpace.embedded("digits").resolve(cnn_inv)
    assert r.names == [
        "features.0/prune", "features.0/sparsity", "features.0/bits",
        "features.2/prune", "features.2/rank", "features.2/sparsity", "features.2/bits",
        "classifier.1/prune", "classifier.1/rank", "classifier.1/sparsity", "classifier.1/bits",
        "classifier.3/sparsity", "classifier.3/bits",
    ]
    # the rule for features.0 replaced bits and switched rank off; prune is inherited
    assert list(r.params["features.0/bits"].distribution.choices) == [8, 32]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- resolution rules
def test_prune_only_on_group_leaders(resnet_inv):
    r = space("defaults: {prune: {low: 0.0, high: 0.5, step: 0.25}}").resolve(resnet_inv)
    pruned = {p.fqn for p in r.params.values()}
    assert pruned == set(resnet_inv.groups)
    # the residual stream is one group: block conv2 layers follow conv1 and get no knob
    assert "layer1.0.conv2" not in pruned and "conv1" in pruned
    assert "fc" not in pruned  # the logits are not prunable


def test_no_rank_on_depthwise_convs():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16),
                          nn.ReLU(), nn.Conv2d(16, 8, 1))
    inv = build_inventory(model, torch.zeros(1, 3, 12, 12))
    assert inv["2"].kind == "DepthwiseConv2d"
    r = space("defaults: {rank: {choices: [0.5, 1.0]}, bits: {choices: [8, 32]}}").resolve(inv)
    assert "2/rank" not in r.params and "2/bits" in r.params and "0/rank" in r.params


def test_first_match_wins_and_null_switches_off(cnn_inv):
    r = space("""
defaults: {bits: {choices: [4, 8]}, rank: {choices: [0.5, 1.0]}}
rules:
  - match: {fqn: "re:^classifier"}
    bits: null
  - match: {kind: Linear}
    bits: {choices: [2]}
""").resolve(cnn_inv)
    assert "classifier.1/bits" not in r.params and "classifier.3/bits" not in r.params
    assert "classifier.1/rank" in r.params  # absent from the rule: inherited
    assert r.rule_of["classifier.1"] == 0 and r.rule_of["features.0"] is None


def test_rank_fraction_becomes_absolute_rank(cnn_inv):
    r = space("defaults: {rank: {choices: [0.125, 0.25, 1.0]}}").resolve(cnn_inv)
    lay = cnn_inv["classifier.1"]  # 128 x 1024 weight: max rank 128
    assert lay.max_rank == 128
    p = r.policy_from_params({"classifier.1/rank": 0.25})
    assert p.layers["classifier.1"].rank == 32  # max(1, round(0.25 * 128))
    assert r.policy_from_params({"classifier.1/rank": 1.0}).layers == {}  # 1.0 = dense


def test_policy_values_of_untouched_settings_are_none(cnn_inv):
    r = SearchSpace.embedded("digits").resolve(cnn_inv)
    assert r.policy_from_params(r.identity_params()).layers == {}
    with pytest.raises(SpaceError, match="parameter 'nope/bits' is not in search space"):
        r.policy_from_params({"nope/bits": 8})


def test_uniform_and_smallest_policies(cnn_inv):
    r = SearchSpace.embedded("digits").resolve(cnn_inv)
    u = r.uniform_policy(prune=0.33, bits=5, rank_fraction=0.3)
    # snapped to each layer's grid: prune step 0.05 (0.35), bits tie 4/6 -> 6 (less
    # compression); the policy writes the share of channels 0.35 removes: 64 -> 48
    assert r.uniform_params(prune=0.33)["features.2/prune"] == 0.35
    assert u.layers["features.2"].prune == 0.25 and u.layers["features.2"].bits == 6
    assert u.layers["features.0"].bits == 8  # its rule allows only 8 or 32
    assert u.layers["classifier.1"].rank == 32  # 0.3 -> nearest choice 0.25 of 128
    small = r.smallest_policy()
    assert small.layers["features.2"].prune == 0.75 and small.layers["features.2"].bits == 4
    small.validate_against(cnn_inv)


def test_suggest_with_a_real_optuna_trial(cnn_inv):
    r = SearchSpace.embedded("digits").resolve(cnn_inv)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        policy = r.suggest(trial)
        policy.validate_against(cnn_inv)
        assert set(trial.params) == set(r.names)
        assert policy == r.policy_from_params(trial.params)
        study.tell(trial, 0.0)
    # an enqueued point is suggested exactly
    study.enqueue_trial(r.smallest_params())
    assert r.suggest(study.ask()) == r.smallest_policy()


def test_ray_param_space_has_the_same_names(cnn_inv):
    pytest.importorskip("ray")
    r = SearchSpace.embedded("digits").resolve(cnn_inv)
    ray_space = r.to_ray_param_space()
    assert list(ray_space) == r.names
    sample = {k: v.sample() for k, v in ray_space.items()}
    r.policy_from_params(sample).validate_against(cnn_inv)


# ---------------------------------------------------------------- bad spaces
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaults: {prune: {low: 0, high: 1.0}}",
         r"test.yaml: defaults: prune: prune value\(s\) \[1\] out of range; valid: \{low, high"),
        ("defaults: {prune: {low: 0.5, high: 0.2}}", "low 0.5 is above high 0.2"),
        ("defaults: {prune: {low: 0, high: 0.5, step: 0.2}}",
         "not a multiple of step 0.2; use high: 0.4"),
        ("defaults: {bits: {choices: [3, 12]}}", r"bits value\(s\) \[12\] out of range"),
        ("defaults: {rank: {low: 0.1, high: 0.5}}", r"rank takes \{choices: \[...\]\}, not a range"),
        ("defaults: {act_bits: {choices: [4]}}", r"valid: \{choices: \[...\]\} from \[8, 32\]"),
        ("defaults: {prunne: {low: 0, high: 0.5}}",
         "defaults: unknown key 'prunne'; valid keys: prune, rank, sparsity, bits, act_bits"),
        ("defaults: {prune: {low: 0, hi: 0.5}}",
         "unknown key 'hi'; valid keys: low, high, step or choices"),
        ("rulez: []", "top level: unknown key 'rulez'; valid keys: schema_version, description"),
        ("schema_version: 2", "schema_version must be 1, got 2"),
        ("rules:\n  - match: {kind: Conv3d}\n    bits: {choices: [8]}",
         "rule 1 .*unknown kind 'Conv3d'; valid kinds: Conv2d, DepthwiseConv2d, Linear"),
        ("rules:\n  - match: {fqn: 're:(['}\n    bits: {choices: [8]}", "rule 1 .*bad regex"),
        ("rules:\n  - match: {name: x}\n", "rule 1 .*unknown key 'name'; valid keys: fqn"),
        ("rules:\n  - match: {}\n    bits: {choices: [8]}", "rule 1: match needs fqn, kind, output and/or attention"),
        ("rules:\n  - match: {fqn: a}\n    bits: {choices: [8]}\n  - bits: {choices: [8]}",
         "rule 2: missing 'match'"),
        ("[1, 2]", "must be a YAML mapping with defaults/rules, got list"),
        ("defaults: [1, 2]", r"defaults must be a mapping \(given \[1, 2\]\)"),
        ("defaults: {bits: 8}", r"defaults: bits must be a mapping \(given 8\)"),
        ("defaults: {bits: {choices: [8]}\n", "is not valid YAML at line"),
    ],
)
def test_bad_space_files_give_one_line_errors(text, expected):
    with pytest.raises(SpaceError, match=expected) as err:
        space(text)
    assert "\n" not in str(err.value)
    assert "test.yaml" in str(err.value)


def test_rules_naming_missing_layers_or_matching_nothing(cnn_inv, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("rules:\n  - match: {fqn: features.9}\n    bits: {choices: [8]}\n")
    with pytest.raises(SpaceError) as err:
        SearchSpace.load(path).resolve(cnn_inv)
    msg = str(err.value)
    assert str(path) in msg and "rule 1 match {fqn: features.9} names a layer the model lacks" in msg
    assert "(similar: features.2)" not in msg or "features.0" in msg
    assert "valid layers: features.0, features.2, classifier.1, classifier.3" in msg

    with pytest.raises(SpaceError, match=r"rule 1 match \{fqn: re:\^decoder\} matches no layer"):
        space("rules:\n  - match: {fqn: 're:^decoder'}\n    bits: {choices: [8]}").resolve(
            cnn_inv)
    # a kind rule may fit no layer of this model (a shared space serves many models)
    assert space("defaults: {bits: {choices: [8, 32]}}\nrules:\n  - match: {kind: "
                 "DepthwiseConv2d}\n    bits: {choices: [8]}").resolve(cnn_inv).params
    with pytest.raises(SpaceError, match="searches nothing on this model"):
        space("defaults: {bits: null}").resolve(cnn_inv)
    with pytest.raises(SpaceError, match="does not exist; pass a YAML file"):
        SearchSpace.load(tmp_path / "missing.yaml")


def test_a_kind_rule_of_a_shared_space_may_match_no_layer_but_a_named_layer_must_exist():
    """torchvision_cnn.yaml has a Linear rule; a conv-only model (SqueezeNet's head is a conv)
    still resolves it. A rule naming a layer by fqn that the model lacks stays an error."""
    import torch
    from torch import nn

    from autocompress.errors import SpaceError
    from autocompress.inventory import build_inventory
    from autocompress.space import SearchSpace

    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 10, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    inv = build_inventory(model, torch.zeros(1, 3, 16, 16))
    assert {layer.kind for layer in inv} == {"Conv2d"}
    resolved = SearchSpace.embedded("torchvision_cnn").resolve(inv)
    assert resolved.params  # the conv rules still apply
    named = SearchSpace.from_yaml("rules:\n  - match: {fqn: classifier}\n    bits: {choices: [8]}\n")
    with pytest.raises(SpaceError, match="names a layer the model lacks"):
        named.resolve(inv)
