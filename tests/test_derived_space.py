"""A search space derived from a model's layers: real torchvision models, a transformer stack,
the YAML written for the user, and ``autocompress search`` on a task that ships no space."""

from __future__ import annotations

import json
import sys
import textwrap

import optuna
import pytest
import torch
import torchvision
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from torch import nn

from autocompress.cli.app import main
from autocompress.derived_space import DERIVED_FILE, derive_space, save_derived_space, tiny_layers
from autocompress.errors import SpaceError
from autocompress.inventory import LayerInventory, build_inventory
from autocompress.space import ResolvedSpace, SearchSpace, default_space

LINEAR = {"rank", "bits", "sparsity", "act_bits"}  # the derived knobs of every Linear layer


def _by_layer(resolved: ResolvedSpace) -> dict[str, set[str]]:
    """``{fqn: {knob, ...}}`` of the searched parameters."""
    knobs: dict[str, set[str]] = {}
    for p in resolved.params.values():
        knobs.setdefault(p.fqn, set()).add(p.knob)
    return knobs


@pytest.fixture(scope="module")
def resnet18_inv() -> LayerInventory:
    return build_inventory(torchvision.models.resnet18(weights=None), torch.zeros(1, 3, 64, 64))


@pytest.fixture(scope="module")
def mobilenet_inv() -> LayerInventory:
    model = torchvision.models.mobilenet_v3_small(weights=None)
    return build_inventory(model, torch.zeros(1, 3, 64, 64))


class TinyTransformer(nn.Module):
    """Two encoder layers between a Linear embedding and a Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class TinyStem(nn.Module):
    """A 1x1 stem too small to matter that leads the residual group of a large conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 1)
        self.block = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y + torch.relu(self.block(y))
        return self.head(y.mean((2, 3)))


def test_resnet18_convs_prune_and_the_output_stays_dense(resnet18_inv):
    resolved = derive_space(resnet18_inv, "torchvision:resnet18").resolve(resnet18_inv)
    knobs = _by_layer(resolved)
    assert resnet18_inv.outputs == ("fc",)
    assert knobs["fc"] == {"bits"}
    assert set(resolved.params["fc/bits"].distribution.choices) == {8, 32}
    # every group leader among the convs searches its prune; no conv gets a rank
    leaders = [x.fqn for x in resnet18_inv if x.prunable and x.group == x.fqn]
    assert leaders and all(f"{fqn}/prune" in resolved.params for fqn in leaders)
    assert knobs["layer4.1.conv1"] == {"prune", "bits", "sparsity"}
    assert not any(p.knob == "rank" for p in resolved.params.values())
    # the stem reads the image: prune, and only 8 or 32 bits
    assert knobs["conv1"] == {"prune", "bits"}
    assert set(resolved.params["conv1/bits"].distribution.choices) == {8, 32}
    # the tiny 1x1 projections are left alone, and together hold under 1% of the MACs
    tiny = tiny_layers(resnet18_inv)
    assert tiny and all(fqn.endswith("downsample.0") and fqn not in knobs for fqn in tiny)
    assert sum(resnet18_inv[f].macs for f in tiny) < 0.01 * sum(x.macs for x in resnet18_inv)


def test_mobilenet_linear_gets_rank_and_depthwise_keeps_8_bits(mobilenet_inv):
    resolved = derive_space(mobilenet_inv, "torchvision:mobilenet_v3_small").resolve(
        mobilenet_inv)
    knobs = _by_layer(resolved)
    assert mobilenet_inv.outputs == ("classifier.3",)
    assert knobs["classifier.3"] == {"bits"}
    # the hidden Linear of the classifier: only the output layer reads its units
    assert knobs["classifier.0"] == {"prune", *LINEAR}
    depthwise = [x.fqn for x in mobilenet_inv if x.kind == "DepthwiseConv2d"]
    assert depthwise
    for fqn in depthwise:
        assert knobs.get(fqn, set()) <= {"prune", "bits"}
        if fqn in knobs:
            assert set(resolved.params[f"{fqn}/bits"].distribution.choices) == {8, 32}
    assert any(p.knob == "prune" for p in resolved.params.values())
    # the squeeze-excite convs of the early blocks are among the tiny layers
    assert "features.1.block.1.fc1" in tiny_layers(mobilenet_inv)
    assert "features.1.block.1.fc1" not in knobs


def test_transformer_stack_prunes_mlp_hidden_units_and_ranks_every_linear():
    inv = build_inventory(TinyTransformer(), torch.zeros(1, 8, 16))
    knobs = _by_layer(derive_space(inv, "tiny-transformer").resolve(inv))
    assert knobs.pop("head") == {"bits"}
    hidden = [fqn for fqn in inv.fqns if fqn.endswith("linear1")]
    ffn_out = [fqn for fqn in inv.fqns if fqn.endswith("linear2")]
    assert len(hidden) == len(ffn_out) == 2
    # nn.MultiheadAttention's projection is fused (in_proj): no head rule, nothing else prunes
    assert all(knobs.pop(fqn) == {"prune", *LINEAR} for fqn in hidden)
    assert set(ffn_out) <= set(knobs)
    assert all(k == LINEAR for k in knobs.values())


def test_hugging_face_attention_gets_head_pruning_on_its_query():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64)
    inv = build_inventory(transformers.BertModel(config).eval(),
                          {"input_ids": torch.randint(0, 100, (1, 8))})
    space = derive_space(inv, "tiny-bert")
    assert "{attention: true}" in [r.match.describe() for r in space.spec.rules]
    resolved = space.resolve(inv)
    knobs = _by_layer(resolved)
    for i in range(2):
        attn = f"encoder.layer.{i}.attention.self"
        # one head decision per attention, asked on the query; key and value follow it
        assert knobs[f"{attn}.query"] == {"prune", *LINEAR}
        assert knobs[f"{attn}.key"] == knobs[f"{attn}.value"] == LINEAR
        assert set(resolved.params[f"{attn}.query/prune"].distribution.choices) == {0.0, 0.25, 0.5}
        assert "prune" in knobs[f"encoder.layer.{i}.intermediate.dense"]
        # the residual stream's layers are not pruned by the derived space
        assert "prune" not in knobs[f"encoder.layer.{i}.output.dense"]
    # the YAML the user gets back round-trips to the same parameters
    again = SearchSpace.from_yaml(space.text).resolve(inv)
    assert again.names == resolved.names


def test_a_tiny_group_leader_keeps_prune_for_its_group():
    inv = build_inventory(TinyStem(), torch.zeros(1, 3, 16, 16))
    assert inv["block"].group == "stem"  # the residual add couples block to the stem
    assert "stem" in tiny_layers(inv)
    knobs = _by_layer(derive_space(inv).resolve(inv))
    assert knobs["stem"] == {"prune"}
    assert knobs["block"] == {"bits", "sparsity"}  # pruned through the stem's parameter


def test_rules_that_no_layer_would_take_are_left_out():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
    inv = build_inventory(model, torch.zeros(1, 3, 8, 8))
    space = derive_space(inv)
    # the one conv reads the image and the one Linear is the output: no kind rule is needed
    assert [r.match.describe() for r in space.spec.rules] == ["{output: true}", "{fqn: 0}"]
    assert _by_layer(space.resolve(inv)) == {"0": {"prune", "bits"}, "3": {"bits"}}


def test_written_yaml_round_trips_and_is_not_overwritten(resnet18_inv, tmp_path):
    derived = derive_space(resnet18_inv, "torchvision:resnet18")
    saved = save_derived_space(derived, tmp_path / "run")
    path = tmp_path / "run" / DERIVED_FILE
    assert saved.source == str(path) and saved.derived
    loaded = SearchSpace.load(path)
    assert loaded.sha256 == derived.sha256
    assert loaded.resolve(resnet18_inv).distributions == derived.resolve(
        resnet18_inv).distributions
    # deriving again (a resumed run) finds the same text and keeps the file
    assert save_derived_space(derive_space(resnet18_inv, "torchvision:resnet18"),
                              tmp_path / "run").sha256 == derived.sha256
    path.write_text(path.read_text().replace("high: 0.5", "high: 0.3"))
    with pytest.raises(SpaceError, match=f"{DERIVED_FILE} differs from the search space derived"):
        save_derived_space(derived, tmp_path / "run")
    # a task with a shipped space keeps it, a task without one needs the inventory
    assert default_space("torchvision:resnet18", resnet18_inv).source == "embedded:torchvision_cnn"
    assert default_space("pkg.mod:fn", resnet18_inv).derived
    with pytest.raises(SpaceError, match="has no default search space"):
        default_space("pkg.mod:fn")


USER_TASK = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autocompress as ac


def make_task(checkpoint=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    data = TensorDataset(torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,)))
    dl = DataLoader(data, batch_size=16)
    return ac.Task(name="tiny-cnn", model=model, example_input=torch.zeros(1, 3, 8, 8),
                   train_loader=dl, val_loader=dl, metric=ac.tasks.top1_accuracy)
'''


def test_search_on_a_user_task_derives_and_saves_its_space(tmp_path, monkeypatch, capsys):
    (tmp_path / "acderived_task.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acderived_task", raising=False)
    out = tmp_path / "out"
    args = ["search", "--task", "acderived_task:make_task", "--trials", "1",
            "--finetune-steps", "0", "--budget", "macs<=80%", "--target", "torch-1t",
            "--no-export", "--out", str(out)]
    assert main(args) in (0, 3), capsys.readouterr().err  # 3: the one trial missed the budget
    path = out / DERIVED_FILE
    # inspect prints the same space without a search
    capsys.readouterr()
    assert main(["inspect", "--task", "acderived_task:make_task", "--derived-space"]) == 0
    assert capsys.readouterr().out == path.read_text()
    config = yaml.safe_load((out / "config.resolved.yaml").read_text())
    # recorded as derived, not by path: a worker that joins the study derives it again
    assert config["space"] is None and config["space_derived"] is True
    assert config["space_sha256"] == SearchSpace.load(path).sha256
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    trial = optuna.load_study(study_name="autocompress", storage=storage).trials[0]
    assert "0/prune" in trial.params and "6/rank" not in trial.params  # 6: the output Linear
    # the same command again resumes: the space derived anew has the study's fingerprint
    text = path.read_text()
    assert main(args) in (0, 3), capsys.readouterr().err
    assert path.read_text() == text
    # the file given back with --space is used as any user space
    edited = tmp_path / "edited.yaml"
    edited.write_text(path.read_text().replace("high: 0.5", "high: 0.3"))
    assert main([*args[:-1], str(tmp_path / "out2"), "--space", str(edited)]) in (0, 3)
    config2 = yaml.safe_load((tmp_path / "out2" / "config.resolved.yaml").read_text())
    assert config2["space"] == str(edited) and config2["space_derived"] is False
    assert not (tmp_path / "out2" / DERIVED_FILE).exists()
    # an edited file in the results folder is not overwritten by a run without --space
    path.write_text(edited.read_text())
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pass it with --space" in err and "\n" not in err


def test_profile_out_derives_the_space_of_a_user_task(tmp_path, monkeypatch, capsys):
    """A shareable table (--out) is measured over the task's space: a user task's derived one."""
    (tmp_path / "acderived_task2.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acderived_task2", raising=False)
    table = tmp_path / "lut.json"
    rc = main(["profile", "--task", "acderived_task2:make_task", "--target", "torch-1t-b4",
               "--runs", "5", "--out", str(table)])
    assert rc == 0, capsys.readouterr().err
    layers = next(iter(json.loads(table.read_text())["targets"].values()))["layers"]
    assert len(layers) > 3  # the three layers' full shapes and the space's compressed ones
