"""Time one training step (forward + backward) of MinGRU and MinLSTM against GRU.

Run from the repository root:

    .venv/bin/python benchmarks/bench_minimal.py --steps 256 1024 4096

It also prints the largest difference between the parallel scan and the
sequential steps for several scan block sizes (``--precision-only`` prints only
that).
Each repeat runs every model once, in turn, so that load from other processes
falls on all of them alike, and the table reports the median per model. The
loss is the sum of the outputs, so backward covers every step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import rnnkit
from rnnkit import minimal
from rnnkit.kernels import backend
from rnnkit.minimal import MinGRU, MinLSTM


def build_models(input_size: int, hidden_size: int) -> dict[str, tuple]:
    """Return name -> (layer, backend, parallel flag or None)."""
    torch.manual_seed(0)
    return {
        "MinGRU (parallel scan)": (MinGRU(input_size, hidden_size), None, True),
        "MinLSTM (parallel scan)": (MinLSTM(input_size, hidden_size), None, True),
        "MinGRU (sequential)": (MinGRU(input_size, hidden_size), None, False),
        "rnnkit GRU (fused)": (rnnkit.GRU(input_size, hidden_size), "fused", None),
        "rnnkit GRU (reference)": (
            rnnkit.GRU(input_size, hidden_size),
            "reference",
            None,
        ),
        "torch.nn GRU": (torch.nn.GRU(input_size, hidden_size), None, None),
    }


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def time_training_step(layer, backend_name, parallel, x, clock) -> float:
    """Return the seconds of one forward and backward pass, on ``clock``."""
    layer.zero_grad(set_to_none=True)
    start = clock()
    if backend_name is not None:
        with backend.use_backend(backend_name):
            output, _ = layer(x)
            output.sum().backward()
    elif parallel is not None:
        output, _ = layer(x, parallel=parallel)
        output.sum().backward()
    else:
        output, _ = layer(x)
        output.sum().backward()
    return clock() - start


def print_precision(steps_list: list[int], args) -> None:
    """Print the maximum |parallel - sequential| in float32, per block size and T."""
    blocks = [32, 64, 128, 256, max(steps_list)]
    print()
    print("max |parallel scan - sequential steps|, float32, h0 ~ N(0, 1), x ~ N(0, 1)")
    print()
    print("| model | block | " + " | ".join(f"T = {t}" for t in steps_list) + " |")
    print("|---|---:|" + "---:|" * len(steps_list))
    default_block = minimal.SCAN_BLOCK
    try:
        for layer_type in (MinGRU, MinLSTM):
            torch.manual_seed(0)
            layer = layer_type(args.input_size, args.hidden_size)
            for block in blocks:
                minimal.SCAN_BLOCK = block
                cells = []
                for steps in steps_list:
                    generator = torch.Generator().manual_seed(steps)
                    x = torch.randn(
                        steps, args.batch, args.input_size, generator=generator
                    )
                    h0 = torch.randn(
                        1, args.batch, args.hidden_size, generator=generator
                    )
                    with torch.no_grad():
                        parallel, _ = layer(x, h0, parallel=True)
                        sequential, _ = layer(x, h0, parallel=False)
                    cells.append(f"{(parallel - sequential).abs().max().item():.1e}")
                label = f"{block}" if block < max(steps_list) else "whole T"
                print(
                    f"| {layer_type.__name__} | {label} | " + " | ".join(cells) + " |"
                )
    finally:
        minimal.SCAN_BLOCK = default_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=8, help="batch size B")
    parser.add_argument("--input-size", type=int, default=8, help="features I")
    parser.add_argument("--hidden-size", type=int, default=32, help="hidden size H")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: CPU time of this process, which other processes' load "
        "disturbs less than wall time; wall: elapsed time",
    )
    parser.add_argument(
        "--precision-only",
        action="store_true",
        help="print only the precision table, with no timing",
    )
    parser.add_argument(
        "--skip-slower-than",
        type=float,
        default=30.0,
        help="seconds: a model whose first run at some T takes longer is not "
        "repeated at that T",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.precision_only:
        print_precision(args.steps, args)
        return
    models = build_models(args.input_size, args.hidden_size)
    clock = CLOCKS[args.clock]
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, {args.threads} torch thread(s), "
        f"B={args.batch}, I={args.input_size}, H={args.hidden_size}, float32, "
        f"median of {args.repeats}, {args.clock} time"
    )
    print()
    print("| model | " + " | ".join(f"T = {t}" for t in args.steps) + " |")
    print("|---|" + "---:|" * len(args.steps))

    results: dict[str, list[str]] = {name: [] for name in models}
    for steps in args.steps:
        x = torch.randn(steps, args.batch, args.input_size)
        timings: dict[str, list[float]] = {name: [] for name in models}
        # One untimed warm-up per model, which also loads the fused kernels.
        for name, (layer, backend_name, parallel) in models.items():
            first = time_training_step(layer, backend_name, parallel, x, clock)
            if first > args.skip_slower_than:
                timings[name].append(first)
        for _ in range(args.repeats):
            for name, (layer, backend_name, parallel) in models.items():
                if len(timings[name]) == 1 and timings[name][0] > args.skip_slower_than:
                    continue
                timings[name].append(
                    time_training_step(layer, backend_name, parallel, x, clock)
                )
        for name in models:
            results[name].append(f"{statistics.median(timings[name]) * 1000:.1f} ms")

    for name, cells in results.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print_precision(args.steps, args)


if __name__ == "__main__":
    main()
