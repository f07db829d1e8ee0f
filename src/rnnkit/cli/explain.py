"""The ``explain`` command: every gate of a recurrent model at every step.

``rnnkit explain --model lstm`` builds a small layer with seeded random weights
and prints each step's computation for a short input. ``--checkpoint PATH``
explains a trained forecaster on a window of the series it was trained on.
``--plot FILE.png`` draws the gates as heatmaps instead of printing them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

MODEL_KINDS = ("rnn", "lstm", "gru")
DEFAULT_INPUT = "0.1,0.2,0.3"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show every gate of a recurrent model at every step",
        description="Print each step of a recurrent layer with its numbers: every "
        "gate's formula, pre-activation and value, then the new state. Use "
        "--model for a small layer with random weights, or --checkpoint for a "
        "model trained by 'rnnkit train' or 'rnnkit compare', explained on a "
        "window of its own series. With --plot, draw the gates as heatmaps "
        "over time instead.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        choices=MODEL_KINDS,
        help="cell kind of a layer with random weights drawn from --seed",
    )
    source.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="checkpoint file written by 'rnnkit train' or 'rnnkit compare'",
    )

    layer = parser.add_argument_group("layer with random weights (--model)")
    layer.add_argument(
        "--input",
        default=None,
        help="comma-separated input values, one per time step "
        f"(default: {DEFAULT_INPUT})",
    )
    layer.add_argument(
        "--hidden",
        "--hidden-size",
        dest="hidden",
        type=int,
        metavar="N",
        help="hidden units (default: 2)",
    )
    layer.add_argument(
        "--num-layers",
        type=int,
        metavar="N",
        help="stacked layers (default: 1)",
    )
    layer.add_argument(
        "--bidirectional", action="store_true", help="add a reverse direction"
    )
    layer.add_argument(
        "--seed",
        type=int,
        help="random seed of the weights; the same seed draws the same weights "
        "as torch.nn (default: 0)",
    )

    window = parser.add_argument_group("trained model (--checkpoint)")
    window.add_argument(
        "--start",
        type=int,
        metavar="ROW",
        help="first row of the window to explain, counted from 0 (default: the "
        "last full window of the series)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw gate heatmaps and the hidden-state trajectory to this PNG file "
        "instead of printing the steps",
    )
    output.add_argument(
        "--layer",
        type=int,
        help="layer to plot, counted from 0; negative counts from the last "
        "(default: the last layer)",
    )
    output.add_argument(
        "--units",
        type=int,
        default=8,
        metavar="N",
        help="values shown per vector in the printed steps (default: %(default)s)",
    )
    output.add_argument(
        "--digits",
        type=int,
        default=4,
        metavar="N",
        help="decimal places of printed values (default: %(default)s)",
    )
    output.add_argument(
        "--weights",
        action="store_true",
        help="also print every weight and bias before the steps",
    )
    parser.set_defaults(handler=run_explain_command)


def run_explain_command(args: argparse.Namespace) -> int:
    from rnnkit import explain

    if args.units < 1:
        raise ValueError(f"invalid --units {args.units}: expected an integer >= 1")
    if not 0 <= args.digits <= 12:
        raise ValueError(f"invalid --digits {args.digits}: expected 0 to 12")
    if args.plot is not None:
        _check_plot_path(args.plot)
    elif args.layer is not None:
        raise ValueError(
            "--layer applies to --plot; the printed steps cover every layer"
        )

    if args.checkpoint is not None:
        layer, result, header, labels = _explain_checkpoint(args)
        title = f"{header[0]}\n{header[1]}"
    else:
        layer, result, header, labels = _explain_random_layer(args)
        title = header[0]

    if args.plot is not None:
        layer_index = -1 if args.layer is None else args.layer
        figure = explain.plot_trace(
            result, layer=layer_index, title=title, step_labels=labels
        )
        path = explain.save_figure(figure, args.plot)
        print(f"wrote {path}")
        return 0

    print("\n".join(header))
    print()
    if args.weights:
        print(explain.format_weights(layer, args.digits, args.units))
    text = explain.format_steps(
        result, digits=args.digits, max_units=args.units, step_labels=labels
    )
    print(text, end="")
    return 0


def _explain_random_layer(args: argparse.Namespace):
    import rnnkit
    from rnnkit.trace import trace

    if args.start is not None:
        raise ValueError("--start applies to --checkpoint, not to --model")
    hidden = 2 if args.hidden is None else args.hidden
    num_layers = 1 if args.num_layers is None else args.num_layers
    seed = 0 if args.seed is None else args.seed
    if hidden < 1:
        raise ValueError(f"invalid --hidden {hidden}: expected an integer >= 1")
    if num_layers < 1:
        raise ValueError(f"invalid --num-layers {num_layers}: expected an integer >= 1")
    values = parse_input(DEFAULT_INPUT if args.input is None else args.input)

    # Seeding right before construction draws the weights that torch.nn draws
    # for the same seed and sizes, because rnnkit creates its parameters in
    # torch.nn's order.
    torch.manual_seed(seed)
    kind = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[args.model]
    layer = kind(1, hidden, num_layers=num_layers, bidirectional=args.bidirectional)
    layer.eval()
    x = torch.tensor(values, dtype=torch.float32).reshape(len(values), 1, 1)
    with torch.no_grad():
        result = trace(layer, x)

    directions = ", bidirectional" if args.bidirectional else ""
    header = [
        f"{args.model.upper()} with input_size=1, hidden_size={hidden}, "
        f"num_layers={num_layers}{directions}; weights drawn with seed {seed}",
        f"input: {len(values)} steps {_format_list(values)}; initial state zero",
    ]
    return layer, result, header, None


def _explain_checkpoint(args: argparse.Namespace):
    from rnnkit.explain import checkpoint_window
    from rnnkit.tasks.forecast import load_checkpoint
    from rnnkit.trace import trace

    random_only = {
        "--input": args.input is not None,
        "--hidden": args.hidden is not None,
        "--num-layers": args.num_layers is not None,
        "--bidirectional": args.bidirectional,
        "--seed": args.seed is not None,
    }
    for name, given in random_only.items():
        if given:
            raise ValueError(
                f"{name} applies to --model; a checkpoint is explained on a window "
                "of its own series (choose it with --start)"
            )

    model, metadata = load_checkpoint(args.checkpoint)
    window = checkpoint_window(metadata, args.start)
    with torch.no_grad():
        traces = trace(model, window.inputs)
    # A forecaster calls its one recurrent layer stack once per forward.
    name, result = next(iter(traces.items()))
    layer = model.get_submodule(name)

    config = metadata["model"]
    end = window.start + len(window.labels) - 1
    header = [
        f"{config['cell'].upper()} forecaster {Path(args.checkpoint).name}: "
        f"hidden_size={config['hidden_size']}, num_layers={config['num_layers']}",
        f"window: rows {window.start} to {end} ({window.labels[0]} to "
        f"{window.labels[-1]}) of {Path(window.source).name}, columns "
        f"{', '.join(window.columns)}",
        "x is each row scaled with the mean and scale fitted on the training part",
    ]
    return layer, result, header, window.labels


def parse_input(text: str) -> list[float]:
    """Parse comma-separated finite numbers, one per time step.

    Raises ``ValueError`` naming the first item that is empty, not a number,
    or not finite.
    """
    items = text.split(",")
    values = []
    for position, item in enumerate(items, start=1):
        item = item.strip()
        try:
            value = float(item)
        except ValueError:
            raise ValueError(
                f"invalid --input {text!r}: item {position} ({item!r}) is not a "
                'number; expected comma-separated numbers such as "0.1,0.2,0.3"'
            ) from None
        if not math.isfinite(value):
            raise ValueError(
                f"invalid --input {text!r}: item {position} ({item!r}) is not a "
                "finite number"
            )
        values.append(value)
    return values


def _check_plot_path(text: str) -> None:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"invalid --plot {text!r}: expected a file name ending in .png"
        )
    if not path.parent.is_dir():
        raise ValueError(
            f"invalid --plot {text!r}: directory {str(path.parent)!r} not found"
        )


def _format_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
