"""Writing a benchmark's result: ``NAME.json`` (the numbers) and ``NAME.md`` (the table)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_result(out: Path, result: dict[str, Any], render: Callable[[dict[str, Any]], str]
                 ) -> str:
    """Write ``result`` to ``out.json`` and ``render(result)`` to ``out.md``; returns the markdown.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     md = write_result(Path(tmp) / "x", {"a": 1}, lambda r: f"a = {r['a']}")
    ...     (Path(tmp) / "x.json").read_text().split()
    ['{', '"a":', '1', '}']
    >>> md
    'a = 1'
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = render(result)
    out.with_suffix(".md").write_text(md)
    return md
