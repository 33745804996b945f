"""Latency of the digits CNN against the width of its first conv: why pruning keeps multiples of 8.

Builds DigitsCNN-shaped models whose first conv has each width in ``--widths``
(weights do not change run time), and measures each on the target the way the
search measures whole models (:func:`autocompress.cost.timing.whole_model_ms`).

    .venv/bin/python benchmarks/channel_alignment.py                  # ort-1t, batch 64
    .venv/bin/python benchmarks/channel_alignment.py --target ort-2t --widths 32 31 24 16

Writes ``benchmarks/results/channel_alignment.md``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="ort-1t")
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 29, 24, 16, 15])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "channel_alignment.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    from torch import nn

    from autocompress.cost import parse_target
    from autocompress.cost.timing import whole_model_ms
    from autocompress.models import DigitsCNN
    from autocompress.tasks import load_task

    task = load_task("digits")
    target = parse_target(args.target).with_batch(task.target_batch_size)
    rows = []
    for width in args.widths:
        model = DigitsCNN().eval()
        model.features[0] = nn.Conv2d(1, width, 3, padding=1)
        model.features[2] = nn.Conv2d(width, 64, 3, padding=1)
        rows.append((width, whole_model_ms(model, task.example_input, target)))
        print(f"first conv {width:3d} channels: {rows[-1][1]:.3f} ms", file=sys.stderr)
    base = rows[0][1]
    lines = [f"# Digits CNN latency against its first conv's width ({target.name})", "",
             "| first conv channels | ms per batch | vs first row |", "|---:|---:|---:|"]
    lines += [f"| {w} | {ms:.3f} | {ms / base:.2f}x |" for w, ms in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
