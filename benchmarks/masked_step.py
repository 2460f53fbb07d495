"""Cost of a masked training step against a plain one (issue 2 target: at most 1.10x).

Run:  ./run.sh python benchmarks/masked_step.py [--steps 100] [--rounds 5] [--batch 64] [--threads 1]

A small residual-free CNN on 32x32 inputs (``experiments.overhead.run.cifar_cnn``); half
of every conv/linear weight masked (fine-grained). Both copies run the same SGD steps
(momentum, weight decay) in interleaved rounds; the masked one is wrapped with
tune_prune's hooks (forward pre-hook, gradient hook, optimizer step post-hook). The
measurement is ``experiments.overhead.run.masked_step_rows``, the one the overhead
experiment tabulates; this script runs it alone. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

try:
    from experiments._common import command_line, machine_lines, markdown_table
    from experiments.overhead.run import cifar_cnn, masked_step_rows
except ModuleNotFoundError:  # run as a file: add the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments._common import command_line, machine_lines, markdown_table
    from experiments.overhead.run import cifar_cnn, masked_step_rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = masked_step_rows("CIFAR CNN", cifar_cnn, (3, 32, 32), args.steps, args.rounds, args.batch)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    text = "\n".join([command_line("benchmarks.masked_step", argv_used), *machine_lines(), "",
                      markdown_table(["measurement", "model", "variant", "ms (median)", "ratio", "note"], rows)])
    print(text)
    return text


if __name__ == "__main__":
    main()
