"""``rnnkit bench``: time torch.nn and rnnkit side by side, write JSON results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnnkit.cli.paths import check_output_file
from rnnkit.kernels import benchmark


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time rnnkit's layers against torch.nn's, in one process, interleaved",
        description=(
            "Time torch.nn and rnnkit on the same weights and input, interleaved: "
            "warm-up runs, then the median of repeated runs of each. Prints the "
            "ratio torch.nn time / rnnkit time (above 1: rnnkit is faster) and the "
            "peak memory of forward + backward, and writes all results as JSON."
        ),
    )
    parser.add_argument(
        "--cells",
        default="RNN,GRU,LSTM",
        help="comma-separated cell kinds among RNN, GRU, LSTM (default: all)",
    )
    parser.add_argument(
        "--sizes",
        default=";".join(",".join(map(str, size)) for size in benchmark.DEFAULT_SIZES),
        help=(
            "semicolon-separated sizes T,B,I,H: time steps, batch, input features, "
            "hidden size (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--passes",
        default="inference,training",
        help=(
            "comma-separated passes: inference (forward under no_grad) and "
            "training (forward + backward); default: both"
        ),
    )
    parser.add_argument(
        "--layers", type=int, default=1, help="number of stacked layers (default: 1)"
    )
    parser.add_argument(
        "--bidirectional", action="store_true", help="run bidirectional layers"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed runs of each (default: 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed runs of each first (default: 3)"
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory measurement, which adds one profiled run per case",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench.json"),
        help="path of the JSON results file (default: bench.json)",
    )
    parser.set_defaults(handler=run)


def parse_sizes(text: str) -> list[tuple[int, int, int, int]]:
    """Parse 'T,B,I,H;T,B,I,H' into tuples, raising ValueError on anything else."""
    sizes = []
    for part in text.split(";"):
        fields = part.strip().split(",")
        try:
            values = tuple(int(field) for field in fields)
        except ValueError:
            values = ()
        if len(values) != 4 or min(values) <= 0:
            raise ValueError(
                f"invalid --sizes entry {part.strip()!r}: expected four positive "
                "integers T,B,I,H such as 100,1,1,32"
            )
        sizes.append(values)
    return sizes


def run(args: argparse.Namespace) -> int:
    if args.repeats <= 0:
        raise ValueError(f"expected --repeats greater than zero, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"expected --warmup of zero or more, got {args.warmup}")
    check_output_file(args.output, "--output")
    cells = [cell.strip().upper() for cell in args.cells.split(",") if cell.strip()]
    passes = [p.strip().lower() for p in args.passes.split(",") if p.strip()]
    cases = benchmark.make_cases(
        cells, parse_sizes(args.sizes), passes, args.layers, args.bidirectional
    )

    def progress(result: benchmark.Result) -> None:
        print(
            f"{result.case.label()} {result.case.pass_}: ratio {result.ratio:.2f}",
            file=sys.stderr,
            flush=True,
        )

    report = benchmark.run_cases(
        cases,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        progress=progress,
    )
    print(benchmark.format_table(report))
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0
