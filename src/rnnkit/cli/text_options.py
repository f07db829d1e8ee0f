"""Command-line options shared by the text commands."""

from __future__ import annotations

import argparse

from rnnkit.tasks.text.model import CELLS


def add_model_options(
    parser: argparse.ArgumentParser,
    defaults,
    embedding_help: str,
    dropout_help: str,
) -> None:
    """Add the recurrent model's options, with defaults from a model config."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=CELLS,
        default=defaults.cell,
        help="recurrent cell kind (default: %(default)s)",
    )
    model.add_argument(
        "--layers",
        "--num-layers",
        type=int,
        default=defaults.num_layers,
        help="stacked recurrent layers (default: %(default)s)",
    )
    model.add_argument(
        "--hidden",
        "--hidden-size",
        type=int,
        default=defaults.hidden_size,
        help="hidden units per layer (default: %(default)s)",
    )
    model.add_argument(
        "--embedding",
        type=int,
        default=defaults.embedding_size,
        help=f"{embedding_help} (default: %(default)s)",
    )
    model.add_argument(
        "--dropout",
        type=float,
        default=defaults.dropout,
        help=f"{dropout_help} (default: %(default)s)",
    )
