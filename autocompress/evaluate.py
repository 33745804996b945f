"""Evaluation of a candidate: apply the policy, a short KD fine-tune, the metric on fixed data.

The fine-tune is a fixed number of optimizer *steps* (not epochs) cycling a
seeded shuffle of the task's training data; the loss mixes knowledge
distillation from the uncompressed model,
``KL(softmax(teacher/T) || softmax(student/T)) * T^2``, with cross-entropy on
the labels when the batches carry integer labels (weight ``alpha`` on KD).
The score is the task metric on a fixed validation subset. Everything is
deterministic for a given ``seed`` (``torch.manual_seed`` plus a seeded
generator for the data order) on a fixed thread count.

Quantisation is post-training here: :func:`compress_and_score` applies the
structural part of the policy (prune -> lowrank -> sparsity) with
:func:`~autocompress.methods.apply_policy`, fine-tunes that float model while
keeping the sparsity zeros at zero (the mask is re-imposed after every step),
and only then runs the registered ``quantize`` method on the fine-tuned
weights (the same method ``apply_policy`` runs last). The result has exactly
the structure ``apply_policy(model, policy)`` builds, so MACs, params and size
of ``autocompress apply`` match the search's numbers; only the weights differ
(fine-tuned). Intermediate metrics reported to a pruner are measured on a
quantised copy, so they describe the same model the final score does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from autocompress import inputs
from autocompress.device import (
    autocast,
    check_precision,
    input_on,
    loader_options,
    resolve_device,
    scored_on,
    teacher_on,
    to_device,
)
from autocompress.errors import TaskError
from autocompress.inputs import ModelInput, OutputSelector
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.tasks.base import Task

Report = Callable[[int, float], bool]  # (step, metric) -> should_stop
LossFn = Callable[[Any, Any, Any], torch.Tensor]  # (student_out, teacher_out, batch) -> loss


@dataclass(frozen=True)
class FinetuneSettings:
    """How every candidate is fine-tuned and scored (the same for every trial of a run).

    ``val_samples``: size of the fixed validation subset (None = all of it);
    ``report_every``: steps between intermediate metrics for a pruner (0 = never);
    ``calibration_batches``: training batches that set 8-bit activation ranges;
    ``threads``: torch threads for the fine-tune and scoring (0 = leave torch's setting);
    ``distill``: the distillation loss (:data:`DISTILL_LOSSES`, or ``auto``: the task's
    own ``distill``, else :func:`distill_for`);
    ``device``: where the fine-tune, the scoring, the teacher and int8 calibration run
    (:func:`autocompress.device.resolve_device`; latency is timed on the CPU target anyway);
    ``precision``: autocast of the fine-tune's forward passes (``fp32`` = none, ``bf16``,
    ``fp16`` on CUDA only).
    One thread is the default: short fine-tunes of small models gain little from more,
    and OpenMP threads that compete for busy cores can slow them down many times over.
    Results are deterministic for a given thread count.

    >>> FinetuneSettings(steps=10).steps
    10
    """

    steps: int = 150
    lr: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7
    seed: int = 0
    report_every: int = 50
    val_samples: int | None = 512
    calibration_batches: int = 4
    threads: int = 1
    distill: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: steps run, whether ``report`` stopped it, seconds, last loss."""

    steps: int
    stopped: bool
    seconds: float
    last_loss: float | None
    reports: list[tuple[int, float]]


@dataclass
class EvalResult:
    """One evaluated candidate: the fine-tuned, quantised model, its metric and timings (s).

    ``stopped_at`` is the step at which ``report`` asked to stop (a pruned
    trial; ``metric`` is then the last intermediate value), else None.
    """

    model: nn.Module
    metric: float
    apply_s: float
    finetune_s: float
    eval_s: float
    stopped_at: int | None = None
    reports: list[tuple[int, float]] | None = None


# ---------------------------------------------------------------- data helpers
def _split_batch(batch: Any) -> tuple[ModelInput, torch.Tensor | None]:
    """``(inputs, labels)`` from a batch of any form (see :func:`autocompress.inputs.split_batch`);
    labels only when they are integer class ids."""
    x, labels = inputs.split_batch(batch)
    if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.dim() == 1:
        return x, labels
    return x, None


def seeded_loader(
    loader: DataLoader, seed: int, device: torch.device | None = None
) -> DataLoader:
    """The loader's dataset with the same batch size, shuffled by a generator seeded ``seed``.

    An iterable dataset cannot be reshuffled; its loader is returned as is. For a CUDA
    ``device`` the batches load in worker processes into pinned memory
    (:func:`autocompress.device.loader_options`); the order is the same.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        return loader
    return DataLoader(
        dataset, batch_size=loader.batch_size or 1, shuffle=True,
        generator=torch.Generator().manual_seed(seed), collate_fn=loader.collate_fn,
        **loader_options(device or torch.device("cpu"), dataset),
    )


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise TaskError("the training loader yields no batches; a fine-tune needs data")


def val_subset(task: Task, n: int | None = 512, seed: int = 0) -> DataLoader:
    """A FIXED validation subset: the first ``n`` samples of a permutation seeded ``seed``.

    The same subset scores every trial of a run; ``n=None`` (or ``n`` >= the
    validation size) uses the task's whole validation loader.
    """
    if task.val_loader is None:
        raise TaskError(
            f"task {task.name!r} has no validation data; a search scores candidates on it"
        )
    loader = task.val_loader
    dataset = loader.dataset
    if n is None or isinstance(dataset, IterableDataset) or n >= len(dataset):  # type: ignore[arg-type]
        return loader
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    sub: Dataset = Subset(dataset, order[:n].tolist())
    return DataLoader(sub, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn)


def evaluate(
    model: nn.Module,
    task: Task,
    val_subset: DataLoader | None = None,
    device: torch.device | None = None,
) -> float:
    """The task metric of ``model`` on ``val_subset`` (default: the task's validation loader).

    ``device``: where ``model`` is (default the CPU); the metric still sees CPU batches and
    outputs (:class:`autocompress.device.OnDevice`).

    >>> from torch.utils.data import TensorDataset
    >>> from autocompress.tasks.base import top1_accuracy
    >>> dl = DataLoader(TensorDataset(torch.eye(2), torch.tensor([0, 1])))
    >>> m = nn.Linear(2, 2); _ = m.weight.data.copy_(torch.eye(2)); _ = m.bias.data.zero_()
    >>> t = Task("toy", m, torch.zeros(1, 2), dl, dl, top1_accuracy)
    >>> evaluate(m, t)
    1.0
    """
    loader = val_subset if val_subset is not None else task.val_loader
    if loader is None:
        raise TaskError(f"task {task.name!r} has no validation data")
    was_training = model.training
    model.eval()
    try:
        return float(task.metric(scored_on(model, device or torch.device("cpu")), loader))
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- fine-tune
def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1),
                    reduction="batchmean") * (t * t)


def _mse(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.mse_loss(student, teacher)


def _cosine(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    s, t = student.flatten(1).float(), teacher.flatten(1).float()
    return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()


#: Distillation losses by name: ``kl`` on softened class scores, ``mse`` and ``cosine`` for
#: embeddings, hidden states and regression outputs.
DISTILL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "kl": _kl, "mse": _mse, "cosine": _cosine,
}
DISTILL_CHOICES = ("auto", *DISTILL_LOSSES)


def distill_for(distill: str, student_out: torch.Tensor, labels: torch.Tensor | None) -> str:
    """The loss ``auto`` means for an output: ``kl`` for class scores, else ``mse``.

    Class scores are a 2-D output whose batches carry integer labels, or no labels; float
    labels (a regression or an embedding target) and any other output take ``mse``.

    >>> distill_for("auto", torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))
    'kl'
    >>> distill_for("auto", torch.zeros(4, 8, 32), None), distill_for("cosine", torch.zeros(4, 3), None)
    ('mse', 'cosine')
    """
    if distill != "auto":
        return distill
    scores = student_out.dim() == 2 and student_out.shape[-1] > 1
    float_labels = labels is not None and labels.is_floating_point()
    return "kl" if scores and not float_labels else "mse"


def kd_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    distill: str = "auto",
) -> torch.Tensor:
    """``alpha * distill(student, teacher) + (1 - alpha) * CE(student, labels)``.

    ``distill``: a name of :data:`DISTILL_LOSSES`, or ``auto`` (:func:`distill_for`). The
    cross-entropy term is added only for ``kl`` with integer class labels.

    >>> s = torch.tensor([[2.0, 0.0]]); round(float(kd_loss(s, s, None, 4.0, 1.0)), 4)
    0.0
    >>> round(float(kd_loss(s, -s, None, 4.0, 1.0, distill="cosine")), 4)  # opposite directions
    2.0
    """
    name = distill_for(distill, student_out, labels)
    kd = DISTILL_LOSSES[name](student_out, teacher_out, temperature)
    if labels is None or alpha >= 1.0 or name != "kl" or labels.is_floating_point():
        return kd
    ce = F.cross_entropy(student_out, labels)
    return alpha * kd + (1.0 - alpha) * ce


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean non-zero masks of every Conv2d/Linear weight that holds exact zeros.

    Re-imposing them after each optimizer step keeps a sparsified model sparse.
    """
    masks: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            if bool((w == 0).any()):
                masks[name] = w != 0
    return masks


def train_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in the mode the fine-tune trains it in: eval, but batch norms in train mode.

    The fine-tune distils the teacher's eval-mode function into the student. Dropout (and
    attention dropout, which Hugging Face keys on the attention module's own mode) would make
    a student that already matches the teacher pay a loss and drift: a 30-step fine-tune of
    the unchanged all-MiniLM-L6-v2 fell from cosine 1.0 to 0.985. Batch norms must re-estimate
    their statistics for the channels that pruning left.

    >>> m = train_mode(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2)))
    >>> [layer.training for layer in m]
    [False, False, True]
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    return model


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: DataLoader,
    steps: int,
    lr: float = 1e-3,
    temperature: float = 4.0,
    alpha: float = 0.7,
    seed: int = 0,
    report: Report | None = None,
    report_every: int = 50,
    eval_fn: Callable[[nn.Module], float] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    output: OutputSelector = None,
    distill: str = "auto",
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> FinetuneResult:
    """Fine-tune ``student`` in place for ``steps`` Adam steps with KD from ``teacher``.

    Every ``report_every`` steps (before the last), ``eval_fn(student)`` is
    passed to ``report(step, metric)``; a True answer stops the fine-tune
    (an Optuna pruner's verdict). ``masks`` (``{module name: bool mask}``)
    are re-imposed on the weights after every step. Batches may hold any
    :data:`~autocompress.inputs.ModelInput`; ``output`` picks the output tensor the loss
    compares when the model returns several (see :func:`autocompress.inputs.select_output`).
    ``distill``: the distillation loss (:func:`kd_loss`); ``loss_fn(student_out,
    teacher_out, batch) -> loss``: a task's own loss, used instead. ``device``: where
    ``student`` and ``teacher`` are (default the CPU); batches are moved there.
    ``precision``: autocast of the forward passes (``fp16`` scales the loss); the loss
    itself is computed in float32.

    >>> from torch.utils.data import TensorDataset
    >>> _ = torch.manual_seed(0); teacher = nn.Linear(4, 3); student = nn.Linear(4, 3)
    >>> dl = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))), batch_size=8)
    >>> r = finetune(student, teacher, dl, steps=20, lr=1e-2, seed=0)
    >>> r.steps, r.stopped
    (20, False)
    """
    t0 = time.perf_counter()
    reports: list[tuple[int, float]] = []
    if steps <= 0:
        return FinetuneResult(0, False, 0.0, None, reports)
    if report is not None and eval_fn is None:
        raise ValueError("finetune: report needs eval_fn to measure the intermediate metric")
    dev = device or torch.device("cpu")
    check_precision(precision, dev)
    torch.manual_seed(seed)
    teacher.eval()
    train_mode(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    # fp16 gradients underflow without loss scaling; bf16 has float32's range.
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    mask_modules = {name: student.get_submodule(name) for name in (masks or {})}
    batches = _cycle(seeded_loader(train_loader, seed, dev))
    last = None
    done = 0
    stopped = False
    for step in range(1, steps + 1):
        batch = next(batches)
        if dev.type != "cpu":
            batch = to_device(batch, dev)
        x, labels = _split_batch(batch)
        with autocast(dev, precision):
            with torch.no_grad():
                t_out = inputs.select_output(inputs.call(teacher, x), output)
            s_out = inputs.select_output(inputs.call(student, x), output)
        if precision != "fp32":
            s_out, t_out = s_out.float(), t_out.float()
        loss = (loss_fn(s_out, t_out, batch) if loss_fn is not None
                else kd_loss(s_out, t_out, labels, temperature, alpha, distill))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if masks:
            with torch.no_grad():
                for name, module in mask_modules.items():
                    module.weight.mul_(masks[name])  # type: ignore[operator]
        last = float(loss.detach())
        done = step
        if report is not None and report_every > 0 and step % report_every == 0 and step < steps:
            assert eval_fn is not None
            metric = float(eval_fn(student))
            train_mode(student)
            reports.append((step, metric))
            if report(step, metric):
                stopped = True
                break
    student.eval()
    return FinetuneResult(done, stopped, time.perf_counter() - t0, last, reports)


# ---------------------------------------------------------------- the candidate pipeline
def structural_policy(policy: CompressionPolicy) -> CompressionPolicy:
    """``policy`` without its quantisation knobs (``bits``, ``act_bits``)."""
    layers = {
        fqn: LayerPolicy(prune=lp.prune, rank=lp.rank, sparsity=lp.sparsity)
        for fqn, lp in policy.layers.items()
    }
    return policy.model_copy(update={"layers": {f: lp for f, lp in layers.items()
                                                if not lp.is_empty()}})


def changes_structure(policy: CompressionPolicy) -> bool:
    """True when the policy prunes, factorises or sparsifies any layer (what a fine-tune recovers).

    >>> from autocompress.policy import CompressionPolicy
    >>> changes_structure(CompressionPolicy(layers={"fc": {"bits": 8, "act_bits": 8}}))
    False
    >>> changes_structure(CompressionPolicy(layers={"fc": {"prune": 0.25, "bits": 8}}))
    True
    """
    return bool(structural_policy(policy).layers)


def quantizes(policy: CompressionPolicy) -> bool:
    """True when the policy fake-quantises any weights or activations."""
    return any((lp.bits is not None and lp.bits <= 8) or lp.act_bits == 8
               for lp in policy.layers.values())


def quantize(
    model: nn.Module,
    policy: CompressionPolicy,
    inventory: LayerInventory,
    example_input: ModelInput,
    calibration: list[ModelInput] | None = None,
) -> nn.Module:
    """Run the registered ``quantize`` method (the last step of ``apply_policy``) in place."""
    from autocompress.methods import METHODS

    return METHODS["quantize"].apply(model, policy, inventory, example_input, calibration).eval()


def calibration_batches(task: Task, n: int) -> list[ModelInput] | None:
    """The first ``n`` training batches in dataset order (activation ranges for act_bits 8)."""
    if task.train_loader is None or n <= 0:
        return None
    loader = task.train_loader
    ordered = DataLoader(loader.dataset, batch_size=loader.batch_size or 1,
                         collate_fn=loader.collate_fn)
    out: list[ModelInput] = []
    for batch in ordered:
        out.append(_split_batch(batch)[0])
        if len(out) >= n:
            break
    return out


def compress_and_score(
    task: Task,
    policy: CompressionPolicy,
    settings: FinetuneSettings,
    inventory: LayerInventory,
    teacher: nn.Module | None = None,
    val_loader: DataLoader | None = None,
    report: Report | None = None,
) -> EvalResult:
    """Apply ``policy`` to ``task.model``, KD fine-tune it, quantise it, score it.

    This is the whole evaluation of one search candidate; the export calls it
    again with the same settings to rebuild the best model (deterministic).
    ``report(step, metric) -> should_stop`` receives intermediate metrics.
    Everything runs on ``settings.device``: ``teacher`` (default: ``task.model``, copied
    there) should already be on it, since the student is copied from it on the device.
    The returned model is on that device.
    """
    if settings.threads > 0:
        from autocompress.cost.latency import torch_threads

        with torch_threads(settings.threads):
            return _compress_and_score(task, policy, settings, inventory, teacher, val_loader,
                                       report)
    return _compress_and_score(task, policy, settings, inventory, teacher, val_loader, report)


def _compress_and_score(
    task: Task,
    policy: CompressionPolicy,
    settings: FinetuneSettings,
    inventory: LayerInventory,
    teacher: nn.Module | None,
    val_loader: DataLoader | None,
    report: Report | None,
) -> EvalResult:
    from autocompress.methods import apply_policy

    device = resolve_device(settings.device)
    check_precision(settings.precision, device)
    teacher = teacher_on(teacher if teacher is not None else task.model, device)
    example = input_on(task.example_input, device)
    loader = val_loader if val_loader is not None else val_subset(task, settings.val_samples)
    calibration = calibration_batches(task, settings.calibration_batches) if any(
        lp.act_bits == 8 for lp in policy.layers.values()) else None
    if calibration is not None and device.type != "cpu":
        calibration = [input_on(c, device) for c in calibration]
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    # The student is copied from the teacher where it is: no round trip to the CPU.
    student = apply_policy(teacher, structural_policy(policy), example, inventory)
    if device.type != "cpu":
        student = student.to(device)  # a method may have made new layers on the CPU
    apply_s = time.perf_counter() - t0
    has_quant = quantizes(policy)

    def quantized(model: nn.Module) -> nn.Module:
        q = quantize(model, policy, inventory, example, calibration)
        return q.to(device) if device.type != "cpu" else q

    def scored(model: nn.Module) -> float:
        if not has_quant:
            return evaluate(model, task, loader, device)
        return evaluate(quantized(copy.deepcopy(model)), task, loader, device)

    result = FinetuneResult(0, False, 0.0, None, [])
    # Quantisation is applied after the fine-tune, so a policy that only quantises leaves the
    # fine-tune nothing to recover: it would train the teacher's own weights.
    if settings.steps > 0 and task.train_loader is not None and changes_structure(policy):
        masks = weight_masks(student) if any(lp.sparsity for lp in policy.layers.values()) else None
        result = finetune(
            student, teacher, task.train_loader, settings.steps, lr=settings.lr,
            temperature=settings.temperature, alpha=settings.alpha, seed=settings.seed,
            report=report, report_every=settings.report_every,
            eval_fn=scored if report is not None else None, masks=masks, output=task.output,
            distill=settings.distill if settings.distill != "auto" else task.distill,
            loss_fn=task.loss, device=device, precision=settings.precision,
        )
    t1 = time.perf_counter()
    if has_quant:
        student = quantized(student)
    # A pruned trial keeps its last intermediate value (measured on the quantised copy).
    metric = (result.reports[-1][1] if result.stopped
              else evaluate(student, task, loader, device))
    eval_s = time.perf_counter() - t1
    return EvalResult(
        model=student.eval(), metric=metric, apply_s=apply_s, finetune_s=result.seconds,
        eval_s=eval_s, stopped_at=result.steps if result.stopped else None,
        reports=result.reports,
    )
