"""``rnnkit demo``: print the first-look walkthrough of RNN, LSTM and GRU."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="print a walkthrough of RNN, LSTM and GRU on a tiny sequence",
        description=(
            "Run an RNN, an LSTM and a GRU with input_size=1, hidden_size=2 and "
            "batch_first=True on [[0.1], [0.2], [0.3]], first from a zero state, "
            "then again from the state the first call returned, and print each "
            "output and state."
        ),
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random initial weights"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rnnkit.tutorial import format_walkthrough

    print(format_walkthrough(args.seed))
    return 0
