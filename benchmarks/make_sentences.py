"""Extract English sentences from the standard library's docstrings (PSF license).

Writes ``autocompress/data/sentences.txt``, the text the built-in ``minilm`` task and
``examples/hf_text_task.py`` embed. The source files are parsed with :mod:`ast`, never
imported, so no module runs; the output depends only on the Python version's stdlib.

The first sentence of every module, class and function docstring is kept when it reads
as prose: 6 to 40 words, ASCII, starting with a capital letter and ending with a period,
without code markup. Sentences are deduplicated, sorted, then shuffled with a fixed seed
and cut to ``--count`` lines.

    python benchmarks/make_sentences.py --out autocompress/data/sentences.txt
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SEED = 0
COUNT = 4000
MIN_WORDS, MAX_WORDS = 6, 40
# Folders of the stdlib that hold tests, third-party code or generated tables, not prose.
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3",
             "turtledemo", "__pycache__", "encodings", "pydoc_data", "ensurepip", "config-3"}
# Markup that marks a sentence as code or reStructuredText rather than prose.
CODE = re.compile(r"(>>>|::|`|\*\*|\{|\}|\[|\]|=|<|>|\\|\||@|#|\$|_\w|\w_|\(\))")
SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(\s|$)")

HEADER = """\
# English sentences: first sentences of the docstrings of the Python {version} standard
# library, extracted by benchmarks/make_sentences.py (deterministic: sorted, then shuffled
# with seed {seed}). Source: the CPython standard library, (c) Python Software Foundation,
# PSF License Agreement (https://docs.python.org/3/license.html). One sentence a line;
# lines starting with '#' are comments.
"""


def docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file (unparsable files give none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph when it reads as prose.

    >>> first_sentence("Return the number of items in the queue.  Not reliable.")
    'Return the number of items in the queue.'
    >>> first_sentence("x.append(y) -- append y") is None
    True
    """
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = SENTENCE_END.search(paragraph)
    if match is None:
        return None
    text = paragraph[: match.start() + 1]
    words = text.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or not text.isascii():
        return None
    if not text[0].isupper() or CODE.search(text) or text.count("(") != text.count(")"):
        return None
    if any(w.isupper() and len(w) > 1 for w in words[:1]):  # ALL-CAPS headings, not sentences
        return None
    return text


def stdlib_sentences(root: Path) -> list[str]:
    """Every distinct prose first sentence under ``root``, sorted."""
    found: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        for doc in docstrings(path):
            sentence = first_sentence(doc)
            if sentence:
                found.add(sentence)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("autocompress/data/sentences.txt"))
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    sentences = stdlib_sentences(Path(sysconfig.get_paths()["stdlib"]))
    random.Random(args.seed).shuffle(sentences)
    kept = sentences[: args.count]
    version = ".".join(map(str, sys.version_info[:3]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(HEADER.format(version=version, seed=args.seed) + "\n".join(kept) + "\n")
    print(f"{len(kept)} of {len(sentences)} sentences -> {args.out} "
          f"({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
