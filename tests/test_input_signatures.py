"""Issue 18: models whose input is not one float tensor (token ids, tuples, dicts of tensors).

Every stage runs on them: inventory, apply, latency on torch and ONNX Runtime, ONNX and
int8 export with their agreement checks, fine-tune and evaluation. Token ids stay int64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autocompress import inputs
from autocompress.cli.app import main
from autocompress.cost.analytic import compressed_shapes
from autocompress.cost.latency import measure_latency
from autocompress.cost.target import parse_target
from autocompress.errors import MethodError, TaskError
from autocompress.evaluate import FinetuneSettings, compress_and_score
from autocompress.export import export_checked_onnx, onnx_metric
from autocompress.export.int8 import calibration_batches, export_int8
from autocompress.inventory import build_inventory
from autocompress.methods import apply_policy
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import export_onnx, onnx_agreement, ort_session, run_onnx
from autocompress.tasks.base import Task, top1_accuracy

VOCAB, SEQ, CLASSES = 50, 6, 4


class TokenClassifier(nn.Module):
    """Token ids (int64) -> embedding -> (masked) mean over the sequence -> MLP -> classes."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, CLASSES)

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.emb(ids)
        if mask is None:
            return h.mean(1)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.pooled(input_ids, None))))


class MaskedClassifier(TokenClassifier):
    """Keyword inputs: ``input_ids`` (int64) and ``attention_mask`` (int64), HF style."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool = False):
        logits = self.fc2(self.act(self.fc1(self.pooled(input_ids, attention_mask))))
        return {"logits": logits, "pooled": self.pooled(input_ids, attention_mask)}


class DictData(Dataset):
    """Hugging Face style samples: ``{"input_ids", "attention_mask", "labels"}``."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        self.mask = (torch.rand(n, SEQ, generator=gen) > 0.2).long()
        self.mask[:, 0] = 1
        self.labels = self.ids[:, 0] % CLASSES  # learnable from the first token

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def ids(batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dict_task() -> Task:
    return make_dict_task()


def tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    return transformers.BertModel(config).eval()


# ---- the helpers -----------------------------------------------------------------------


def test_batched_repeats_every_tensor_without_casting() -> None:
    x = {"input_ids": ids(2), "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}
    b = inputs.batched(x, 5)
    assert list(b) == ["input_ids", "attention_mask"]
    assert b["input_ids"].dtype == torch.int64 and b["input_ids"].shape == (5, SEQ)
    assert torch.equal(b["input_ids"][4], x["input_ids"][0])
    t = inputs.batched((ids(), torch.zeros(1, 3)), 3)
    assert isinstance(t, tuple) and t[0].dtype == torch.int64 and t[1].shape == (3, 3)


def test_split_batch_reads_pairs_and_hugging_face_dicts() -> None:
    x, y = inputs.split_batch(next(iter(DataLoader(DictData(8, 0), batch_size=4))))
    assert set(x) == {"input_ids", "attention_mask"} and y.shape == (4,)
    x, y = inputs.split_batch(((ids(), torch.ones(1, SEQ)), torch.tensor([1])))
    assert isinstance(x, tuple) and len(x) == 2 and y.tolist() == [1]


# ---- int64 token ids: inventory, latency, ONNX -----------------------------------------


def test_token_id_model_inventory_latency_and_onnx() -> None:
    model = TokenClassifier().eval()
    x = ids()
    inv = build_inventory(model, x)
    assert inv.fqns == ["fc1", "fc2"]
    assert inv["fc1"].macs == 16 * 32 and inv.outputs == ("fc2",)
    assert inv["fc1"].prunable and not inv["fc2"].prunable
    for target in ("torch-1t-b4", "ort-cpu-1t-b4"):
        stats = measure_latency(model, x, parse_target(target), runs=3, warmup=1)
        assert stats.target == parse_target(target).name and stats.median_ms > 0
    data = export_onnx(model, x)
    sess = ort_session(data)
    (signature,) = sess.get_inputs()
    assert signature.type == "tensor(int64)" and signature.shape[0] == "batch"
    xb = ids(3)
    got = run_onnx(data, xb)
    assert np.abs(got - model(xb).detach().numpy()).max() < 1e-5


def test_a_tuple_input_is_passed_positionally() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc = nn.Embedding(VOCAB, 8), nn.Linear(8 + 3, 2)

        def forward(self, token_ids: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.emb(token_ids).mean(1), extra], dim=1))

    model, x = Two().eval(), (ids(), torch.randn(1, 3))
    assert build_inventory(model, x).fqns == ["fc"]
    stats = measure_latency(model, x, parse_target("ort-cpu-1t-b2"), runs=3, warmup=1)
    assert stats.target == "ort-cpu-1t-b2"
    got, ref = onnx_agreement(model, export_onnx(model, x), inputs.batched(x, 3))
    assert got.shape == (3, 2) and np.abs(got - ref).max() < 1e-5


# ---- a dict-input task through every stage ---------------------------------------------


def test_dict_task_inventory_apply_and_latency(dict_task: Task) -> None:
    model, x = dict_task.model, dict_task.example_input
    inv = build_inventory(model, x)
    assert inv.fqns == ["fc1", "fc2"] and inv.total_macs > 0
    policy = CompressionPolicy(layers={"fc1": LayerPolicy(prune=0.5, bits=8, act_bits=8)})
    small = apply_policy(model, policy, x, inv, calibration=dict_task.train_loader)
    assert small.fc1[1].out_features == 16  # behind its 8-bit input quantiser
    assert small(**inputs.batched(x, 3))["logits"].shape == (3, CLASSES)
    stats = measure_latency(small, x, parse_target("ort-cpu-1t-b4"), runs=3, warmup=1)
    assert stats.target == "ort-cpu-1t-b4" and stats.median_ms > 0


def test_dict_task_finetunes_exports_and_scores_in_onnx_runtime(dict_task: Task,
                                                                tmp_path: Path) -> None:
    inv = build_inventory(dict_task.model, dict_task.example_input)
    policy = CompressionPolicy(layers={"fc1": LayerPolicy(prune=0.5, bits=8)})
    settings = FinetuneSettings(steps=8, lr=1e-2, val_samples=None, report_every=0)
    result = compress_and_score(dict_task, policy, settings, inv)
    assert 0.0 <= result.metric <= 1.0 and result.model.fc1.out_features == 16
    # The agreement check compares the task's scored output (``logits``) in ONNX Runtime.
    diff = export_checked_onnx(result.model, dict_task, tmp_path / "m.onnx")
    assert diff < 1e-4
    names = [i.name for i in ort_session(tmp_path / "m.onnx").get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    assert onnx_metric(dict_task, tmp_path / "m.onnx", 1) == pytest.approx(result.metric)
    batches = calibration_batches(dict_task.train_loader, dict_task.example_input, 4, 2)
    assert len(batches) == 2 and batches[0]["input_ids"].dtype == torch.int64
    int8 = export_int8(result.model, dict_task.example_input, tmp_path / "m.int8.onnx", batches)
    assert 0.0 <= onnx_metric(dict_task, int8, 1) <= 1.0
    # no convolution: quantised dynamically, the Linear layers' MatMul/Gemm only
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops


# ---- a Hugging Face BertModel built from a config (no download) ------------------------


def test_tiny_bert_inventory_latency_and_onnx_agreement() -> None:
    bert = tiny_bert()
    x = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    inv = build_inventory(bert, x)
    assert "encoder.layer.0.intermediate.dense" in inv and inv.total_macs > 0
    # The query, key and value are pruned together by whole heads (single channels would
    # break the reshape into heads).
    query = inv["encoder.layer.0.attention.self.query"]
    assert query.prunable and query.heads == 2 and query.head_dim == 16
    assert inv["encoder.layer.0.attention.self.value"].group == query.fqn
    assert inv["encoder.layer.0.intermediate.dense"].prunable
    stats = measure_latency(bert, x, parse_target("ort-cpu-1t-b4"), runs=3, warmup=1)
    assert stats.target == "ort-cpu-1t-b4" and stats.median_ms > 0
    named = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    data = export_onnx(bert, named)
    assert [i.type for i in ort_session(data).get_inputs()] == ["tensor(int64)"] * 2
    got, ref = onnx_agreement(bert, data, inputs.batched(named, 2), "last_hidden_state")
    assert got.shape == (2, 8, 32) and np.abs(got - ref).max() < 1e-4
    # Token inputs have a dynamic length too: a padded batch of another length runs.
    longer = {"input_ids": torch.randint(0, 100, (3, 13)), "attention_mask": torch.ones(3, 13).long()}
    got, ref = onnx_agreement(bert, data, longer, "last_hidden_state")
    assert got.shape == (3, 13, 32) and np.abs(got - ref).max() < 1e-4
    batches = calibration_batches([named, inputs.batched(longer, 5)], named, 4)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(1, 8), (4, 13)]


def test_head_pruned_bert_runs_matches_its_cost_model_and_exports() -> None:
    bert = tiny_bert()
    x = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    inv = build_inventory(bert, x)
    attn = "encoder.layer.0.attention.self"
    policy = CompressionPolicy(layers={f"{attn}.query": LayerPolicy(prune=0.5)})
    small = apply_policy(bert, policy, x, inv)
    module = small.get_submodule(attn)
    # one whole head of 16 channels left in query, key and value; the output projection
    # lost the inputs of the removed heads, and the module knows its new head count
    assert [module.get_submodule(n).out_features for n in ("query", "key", "value")] == [16] * 3
    assert small.get_submodule("encoder.layer.0.attention.output.dense").in_features == 16
    assert module.num_attention_heads == 1 and module.all_head_size == 16
    # the cost model's layer shapes are the built model's
    for shape in compressed_shapes(policy, inv):
        layer = small.get_submodule(shape.fqn)
        assert (shape.in_channels, shape.out_channels) == (layer.in_features, layer.out_features)
    data = export_onnx(small, x)
    got, ref = onnx_agreement(small, data, x, "last_hidden_state")
    assert got.shape == (2, 8, 32) and np.abs(got - ref).max() < 1e-4
    # the kept heads are the kept model's: the outputs moved, but not to garbage
    full = bert(input_ids=x).last_hidden_state
    assert torch.nn.functional.cosine_similarity(torch.as_tensor(got), full, dim=-1).mean() > 0.5


# ---- a forward that fails on its example input -----------------------------------------


def make_dict_task() -> Task:
    """The dict-input task as a user's factory (``--task test_input_signatures:make_dict_task``)."""
    torch.manual_seed(0)
    data = DictData(64, seed=0)
    return Task(
        name="dict-ids", model=MaskedClassifier().eval(),
        example_input={"input_ids": data.ids[:1], "attention_mask": data.mask[:1]},
        train_loader=DataLoader(data, batch_size=16), val_loader=DataLoader(DictData(32, 1),
                                                                           batch_size=16),
        metric=top1_accuracy, output="logits", target_batch_size=4,
    )


def test_apply_on_a_dict_input_task_checks_its_onnx_on_the_scored_output(
        monkeypatch, capsys, tmp_path: Path) -> None:
    """``autocompress apply`` exports and checks a dict-input model with a structured output."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    task = make_dict_task()
    inv = build_inventory(task.model, task.example_input)
    layer = next(info.fqn for info in inv if info.kind == "Linear")
    policy = tmp_path / "p.json"
    CompressionPolicy(layers={layer: LayerPolicy(prune=0.25, bits=8)}).save(policy)
    out = tmp_path / "applied"
    assert main(["apply", "--task", "test_input_signatures:make_dict_task", "--policy",
                 str(policy), "--out", str(out), "--format", "json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert (out / "model.onnx").is_file() and report["onnx_agrees"] is True


def broken_task() -> Task:
    """A user task whose example input has the wrong width for its model."""
    return Task(name="broken", model=nn.Linear(3, 2), example_input=torch.zeros(1, 4),
                train_loader=None, val_loader=None, metric=top1_accuracy)


def test_a_forward_that_fails_is_one_error_line(monkeypatch, capsys) -> None:
    with pytest.raises(TaskError, match=r"Linear's forward fails on the example input"):
        build_inventory(nn.Linear(3, 2), torch.zeros(1, 4))
    with pytest.raises(TaskError, match=r"forward\(\) got an unexpected keyword.*keyword arguments"):
        build_inventory(TokenClassifier(), {"ids": ids()})  # its forward names it input_ids
    with pytest.raises(TaskError, match="expected a tensor"):
        Task(name="bad", model=nn.Linear(3, 2), example_input={"x": [1, 2]},  # type: ignore[arg-type]
             train_loader=None, val_loader=None, metric=top1_accuracy)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["inspect", "--task", "test_input_signatures:broken_task"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "forward fails" in err and "1x4" in err
    assert "Traceback" not in err


# ---- the whole search, on ONNX Runtime, for a dict-input task --------------------------


def test_search_and_export_run_on_a_dict_input_task(dict_task: Task, tmp_path: Path) -> None:
    from autocompress.engine import search

    result = search(dict_task, space="embedded:linear_layers", budget="size<=60%",
                    target="ort-cpu-1t-b4", trials=3, out=tmp_path / "out", finetune_steps=4)
    assert result.exit_status == 0 and result.summary is not None
    summary = result.summary
    assert summary.onnx_max_abs_diff < 1e-4 and summary.measured_latency_ms > 0
    assert summary.meets_budget and set(summary.files) >= {"model_onnx", "best_policy"}


def test_a_model_onnx_cannot_export_is_one_error_line() -> None:
    class Eigen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return torch.linalg.eigh(h @ h.T)[0]

    with pytest.raises(MethodError, match=r"Eigen cannot be exported to ONNX \(.*eigh") as info:
        measure_latency(Eigen(), torch.zeros(2, 4), parse_target("ort-cpu-1t-b2"), runs=2)
    assert "\n" not in str(info.value)


def test_a_hugging_face_classifier_is_scored_in_onnx_runtime_by_its_own_metric(
        tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    token_ids = torch.randint(0, 100, (32, 8), generator=torch.Generator().manual_seed(0))
    val = DataLoader(torch.utils.data.TensorDataset(token_ids, token_ids[:, 0] % 3), batch_size=8)

    @torch.no_grad()
    def logits_accuracy(m: nn.Module, loader: DataLoader) -> float:
        hits = [(m(x).logits.argmax(1) == y).float().mean() for x, y in loader]  # attribute access
        return float(torch.stack(hits).mean())

    task = Task(name="hf", model=model, example_input=token_ids[:1], train_loader=None,
                val_loader=val, metric=logits_accuracy, output="logits")
    assert export_checked_onnx(model, task, tmp_path / "hf.onnx") < 1e-4
    outputs = [o.name for o in ort_session(tmp_path / "hf.onnx").get_outputs()]
    assert outputs == ["logits"]
    assert onnx_metric(task, tmp_path / "hf.onnx", 1) == pytest.approx(task.evaluate())


def test_the_issue_search_a_bert_model_on_token_ids_on_onnx_runtime(tmp_path: Path) -> None:
    """Issue 18's report: a BertModel whose forward takes one LongTensor, searched with
    ``embedded:linear_layers`` on ONNX Runtime, used to fail on a float32 cast."""
    import copy

    from autocompress.engine import search

    bert = tiny_bert()
    reference = copy.deepcopy(bert)
    token_ids = torch.randint(0, 100, (48, 8), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def cosine(m: nn.Module, loader: DataLoader) -> float:
        sims = [torch.cosine_similarity(m(x).last_hidden_state, reference(x).last_hidden_state,
                                        dim=-1).mean() for (x,) in loader]
        return float(torch.stack(sims).mean())

    task = Task(name="bert", model=bert, example_input=token_ids[:1],
                train_loader=DataLoader(torch.utils.data.TensorDataset(token_ids[:32]),
                                        batch_size=16),
                val_loader=DataLoader(torch.utils.data.TensorDataset(token_ids[32:]),
                                      batch_size=16),
                metric=cosine, metric_name="cosine", output="last_hidden_state",
                target_batch_size=4)
    result = search(task, space="embedded:linear_layers", budget="size<=85%",
                    target="ort-cpu-1t-b4", trials=2, out=tmp_path / "out", finetune_steps=2)
    assert result.exit_status == 0 and result.summary is not None
    summary = result.summary
    assert summary.onnx_max_abs_diff < 1e-4 and summary.best_metric > 0.9
    assert summary.measured_latency_ms > 0 and summary.target == "ort-cpu-1t-b4"
