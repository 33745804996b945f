"""Latency of the digits CNN against the width of its convs: why pruning keeps multiples of 16.

Builds DigitsCNN-shaped models whose first conv has each width in ``--widths`` and,
separately, whose second conv (the one before the max pool) has each width in
``--second-widths`` (weights do not change run time), and measures each on the target the
way the search measures whole models (:func:`autocompress.cost.timing.whole_model_ms`).
ONNX Runtime's NCHWc kernels work in blocks of 16 channels on AVX-512 CPUs and 8 on AVX2
ones; the CPU's vector extensions are recorded with the table.

    .venv/bin/python benchmarks/channel_alignment.py                  # ort-1t, batch 64
    .venv/bin/python benchmarks/channel_alignment.py --target ort-2t --widths 32 31 24 16

Writes ``benchmarks/results/channel_alignment.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="ort-1t")
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 29, 24, 16, 15])
    parser.add_argument("--second-widths", nargs="+", type=int,
                        default=[64, 56, 48, 40, 32, 24, 16])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "channel_alignment.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    from torch import nn

    from autocompress.cost import parse_target
    from autocompress.cost.latency import cpu_description
    from autocompress.cost.timing import whole_model_ms
    from autocompress.models import DigitsCNN
    from autocompress.tasks import load_task

    task = load_task("digits")
    target = parse_target(args.target).with_batch(task.target_batch_size)

    def timed(first: int, second: int) -> float:
        model = DigitsCNN().eval()
        model.features[0] = nn.Conv2d(1, first, 3, padding=1)
        model.features[2] = nn.Conv2d(first, second, 3, padding=1)
        model.classifier[1] = nn.Linear(second * 16, 128)
        ms = whole_model_ms(model, task.example_input, target)
        print(f"convs {first:3d} -> {second:3d} channels: {ms:.3f} ms", file=sys.stderr)
        return ms

    first_rows = [(w, timed(w, 64)) for w in args.widths]
    second_rows = [(w, timed(32, w)) for w in args.second_widths]
    cpu = cpu_description()
    flags = set(cpu.get("flags", []))
    vector = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags)
    lines = [f"# Digits CNN latency against its convs' widths ({target.name})", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu.get('cpu', '?')} "
             f"({cpu.get('cores', '?')} cores; {vector or 'no AVX2'}).", "",
             "| first conv channels (second: 64) | ms per batch | vs first row |",
             "|---:|---:|---:|"]
    lines += [f"| {w} | {ms:.3f} | {ms / first_rows[0][1]:.2f}x |" for w, ms in first_rows]
    lines += ["", "| second conv channels (first: 32) | ms per batch | vs first row |",
              "|---:|---:|---:|"]
    lines += [f"| {w} | {ms:.3f} | {ms / second_rows[0][1]:.2f}x |" for w, ms in second_rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
