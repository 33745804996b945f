"""The latency table's file: its format, its keys, reading it, and merging and writing it.

One JSON file (``latency_lut.json``) holds the tables of any number of targets, keyed by
the machine's fingerprint (:func:`~autocompress.cost.latency.env_fingerprint`), each with
its ``layers`` (keyed by :func:`layer_key`), its ``models`` (whole-model fits) and the
layers ONNX Runtime fuses into integer kernels. Several processes fill one file: a write
merges in what the others wrote since it was read, then replaces the file atomically.

>>> data = empty_table()
>>> data["format"], data["targets"]
('autocompress.latency_lut', {})
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from autocompress.cost.analytic import LayerShape
from autocompress.errors import InputFileError

FORMAT = "autocompress.latency_lut"
SCHEMA_VERSION = 1
DEFAULT_FILE = "latency_lut.json"
# How layer entries are timed; a table section timed another way is measured again
# (2: a compressed layer in blocks alternating with its uncompressed layer, as a ratio;
# 3: a convolution with 8-bit inputs behind a stand-in producer, its reorders counted).
LAYER_METHOD = 3


def _padding(k: int, s: int, size_in: int, size_out: int) -> int:
    """Smallest symmetric padding that maps ``size_in`` to ``size_out`` (dilation 1)."""
    return max(0, math.ceil(((size_out - 1) * s + k - size_in) / 2))


def layer_key(shape: LayerShape, batch: int) -> str:
    """The LUT key of a layer config: everything that decides its run time, nothing else.

    >>> from autocompress.cost.analytic import LayerShape
    >>> s = LayerShape("c", "Conv2d", 32, 64, (3, 3), (1, 1), 1, (1, 32, 8, 8), (1, 64, 8, 8), True)
    >>> layer_key(s, 64)
    'Conv2d|in=32|out=64|k=3x3|s=1x1|p=1x1|g=1|x=8x8|b=64|r=0|a=32|w=32|bias=1'
    >>> from dataclasses import replace
    >>> layer_key(replace(s, act_bits=8, q_out=True), 64)[-24:]
    'r=0|a=8|w=32|bias=1|qo=1'
    """
    kh, kw = shape.kernel_size
    if shape.kind == "Linear":
        spatial = "x".join(str(d) for d in shape.input_shape[1:-1]) or "-"
        geom = f"x={spatial}"
    else:
        ph, pw = conv_padding(shape)
        geom = (f"k={kh}x{kw}|s={shape.stride[0]}x{shape.stride[1]}|p={ph}x{pw}|g={shape.groups}|"
                f"x={shape.input_shape[2]}x{shape.input_shape[3]}")
    act = 8 if shape.act_bits == 8 else 32
    w = 8 if int8_weights(shape) else 32
    # The integer-kernel marks only where set, so the keys of every other entry stay as they were.
    fused = ("|qi=1" if shape.q_in else "") + ("|qo=1" if shape.q_out else "")
    return (f"{shape.kind}|in={shape.in_channels}|out={shape.out_channels}|{geom}|b={batch}|"
            f"r={shape.rank or 0}|a={act}|w={w}|bias={int(shape.has_bias)}{fused}")


def conv_padding(shape: LayerShape) -> tuple[int, int]:
    kh, kw = shape.kernel_size
    sh, sw = shape.stride
    return (_padding(kh, sh, shape.input_shape[2], shape.output_shape[2]),
            _padding(kw, sw, shape.input_shape[3], shape.output_shape[3]))


def int8_weights(shape: LayerShape) -> bool:
    """True when ``apply_policy`` exports the layer's weight as int8 QDQ too.

    That is a layer with 2..8-bit weights *and* 8-bit inputs: ONNX Runtime may
    then run an integer kernel, a different cost from the float one.
    """
    return shape.act_bits == 8 and 2 <= shape.weight_bits <= 8


def empty_table() -> dict[str, Any]:
    """A table file with no target yet."""
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "targets": {}}


def default_lut_path() -> Path:
    """``$AUTOCOMPRESS_CACHE/latency_lut.json`` (``~/.cache/autocompress`` by default)."""
    root = os.environ.get("AUTOCOMPRESS_CACHE") or Path.home() / ".cache" / "autocompress"
    return Path(root) / DEFAULT_FILE


def read_table(path: Path | None) -> dict[str, Any]:
    """The table file at ``path`` (an empty table when there is none yet).

    Raises :class:`InputFileError` for a file that is not a readable latency table.
    """
    if path is None or not path.exists():
        return empty_table()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(
            f"latency table {str(path)!r} is not readable JSON ({exc}); delete it to "
            "rebuild it, or point --lut elsewhere"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputFileError(
            f"{str(path)!r} is not an autocompress latency table (format {FORMAT!r}); "
            "delete it to rebuild it, or point --lut elsewhere"
        )
    return data


def merge_tables(mine: dict[str, Any], theirs: dict[str, Any],
                 forgotten: str | None = None) -> None:
    """Add to ``mine`` the targets and entries of ``theirs`` it lacks (``mine`` wins).

    ``forgotten``: a target key whose entries ``mine`` dropped on purpose (measured in a
    noisy period): its old entries are not merged back.

    >>> a = {"targets": {"t": {"layers": {"x": 1}}}}
    >>> merge_tables(a, {"targets": {"t": {"layers": {"x": 2, "y": 3}}, "u": {}}})
    >>> a["targets"]["t"]["layers"], sorted(a["targets"])
    ({'x': 1, 'y': 3}, ['t', 'u'])
    """
    for key, entry in theirs["targets"].items():
        own = mine["targets"].setdefault(key, entry)
        if own is entry or key == forgotten:
            continue
        for section in ("layers", "models", "int8_fusable"):
            ours = own.setdefault(section, {})
            for k, v in entry.get(section, {}).items():
                ours.setdefault(k, v)


def write_table(data: dict[str, Any], dest: Path, forgotten: str | None = None) -> None:
    """Merge what ``dest`` holds now into ``data`` (:func:`merge_tables`), then write it
    atomically (a temporary file replaced into place)."""
    merge_tables(data, read_table(dest), forgotten)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name, suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, dest)
