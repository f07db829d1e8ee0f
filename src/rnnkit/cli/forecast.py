"""The ``compare``, ``train`` and ``forecast`` commands.

They parse options into the forecast task's settings, draw the training
progress bar and the results table, and have the task write its files.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import TextIO

import pandas as pd

from rnnkit import distributed
from rnnkit.resume import RunCheckpoint
from rnnkit.tasks.forecast import (
    CompareSettings,
    EpochReport,
    forecast_future,
    load_checkpoint,
    prepare,
    run_compare,
)
from rnnkit.tasks.forecast.compare import CompareResult, best_by_metric
from rnnkit.tasks.forecast.data import FILL_METHODS
from rnnkit.tasks.forecast.model import CELL_KINDS
from rnnkit.tasks.forecast.outputs import (
    check_output_dir,
    format_dates,
    write_comparison,
    write_future,
)
from rnnkit.tasks.forecast.windows import STRATEGIES

DEFAULTS = CompareSettings()
METRIC_LABELS = {"mae": "MAE", "rmse": "RMSE", "smape": "sMAPE", "mase": "MASE"}
# Written to the output directory after every epoch, and read by --resume.
RESUME_FILE = "resume.pt"


def register(subparsers: argparse._SubParsersAction) -> None:
    compare = subparsers.add_parser(
        "compare",
        help="train RNN, LSTM and GRU forecasters and score them against baselines",
        description="Train one forecaster per cell kind on a series (the built-in "
        "yearly sunspot numbers unless --data is given), forecast its test part, "
        "and score every model and the naive, seasonal naive and ETS baselines "
        "with MAE, RMSE, sMAPE and MASE.",
    )
    _add_data_options(compare)
    compare.add_argument(
        "--models",
        type=_model_list,
        metavar="LIST",
        default=list(DEFAULTS.models),
        help="comma-separated cell kinds to train (default: rnn,lstm,gru)",
    )
    _add_model_options(compare)
    _add_output_options(compare, "runs/compare")
    compare.set_defaults(
        handler=functools.partial(distributed.run_command, run_compare_command)
    )

    train = subparsers.add_parser(
        "train",
        help="train one forecaster and write its checkpoint",
        description="Train one forecaster, score it on the test part, and write "
        "its checkpoint with results.json and forecast.csv.",
    )
    _add_data_options(train)
    train.add_argument(
        "--model",
        choices=list(CELL_KINDS),
        default="lstm",
        help="cell kind to train (default: lstm)",
    )
    _add_model_options(train)
    _add_output_options(train, "runs/train")
    train.set_defaults(
        handler=functools.partial(distributed.run_command, run_train_command)
    )

    forecast = subparsers.add_parser(
        "forecast",
        help="forecast past the end of a series with a trained checkpoint",
        description="Forecast past the last row of the series with a checkpoint "
        "written by compare or train, and write forecast.csv and forecast.png.",
    )
    forecast.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="checkpoint file (.pt) to forecast with",
    )
    forecast.add_argument(
        "--data",
        metavar="FILE",
        help="CSV file to forecast (default: the series the model was trained on)",
    )
    forecast.add_argument(
        "--horizon",
        type=int,
        metavar="N",
        help="steps to forecast (default: the horizon the model was trained for)",
    )
    forecast.add_argument(
        "--fill",
        choices=FILL_METHODS,
        help="fill missing values by carrying the last value forward or by linear "
        "interpolation (default: the method the model was trained with; without "
        "one, missing values are an error)",
    )
    forecast.add_argument(
        "--out",
        default="runs/forecast",
        metavar="DIR",
        help="output directory (default: %(default)s)",
    )
    forecast.set_defaults(handler=run_forecast_command)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        metavar="FILE",
        help="CSV file with a date column and value columns (default: the "
        "built-in yearly sunspot numbers shipped with statsmodels)",
    )
    group.add_argument(
        "--column",
        dest="columns",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="value column(s); the first is forecast from all of them (default: "
        "the only column besides the date column)",
    )
    group.add_argument(
        "--date-column",
        metavar="NAME",
        help="column of dates (default: the first column, if it contains dates)",
    )
    group.add_argument(
        "--fill",
        choices=FILL_METHODS,
        help="fill missing values by carrying the last value forward or by linear "
        "interpolation (default: missing values are an error)",
    )
    group.add_argument(
        "--season",
        type=int,
        metavar="N",
        help="season length in rows, for seasonal naive and MASE (default: "
        "inferred from the dates: hourly 24, daily 7, weekly 52, monthly 12, "
        "quarterly 4, yearly 1; 1 without dates)",
    )
    group.add_argument(
        "--horizon",
        type=int,
        default=DEFAULTS.horizon,
        metavar="N",
        help="steps to forecast (default: %(default)s)",
    )
    group.add_argument(
        "--context",
        type=int,
        default=DEFAULTS.context,
        metavar="N",
        help="past steps the model reads per forecast (default: %(default)s)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        metavar="F",
        help="fraction of rows for validation, after training (default: %(default)s)",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULTS.test_fraction,
        metavar="F",
        help="fraction of rows for the test, at the end (default: %(default)s)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and training")
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULTS.strategy,
        help="direct: the model emits the whole horizon; recursive: it emits one "
        "step and is fed its own output (default: %(default)s)",
    )
    options = [
        ("--hidden-size", int, DEFAULTS.hidden_size, "hidden units per layer"),
        ("--num-layers", int, DEFAULTS.num_layers, "stacked recurrent layers"),
        ("--dropout", float, DEFAULTS.dropout, "dropout between stacked layers"),
        ("--recurrent-dropout", float, DEFAULTS.recurrent_dropout, "probability "
         "of dropping a unit of h in the recurrent product, one mask per "
         "sequence"),
        ("--zoneout", float, DEFAULTS.zoneout, "probability that a unit keeps "
         "its previous state at a step (h, and c for the LSTM)"),
        ("--weight-dropout", float, DEFAULTS.weight_dropout, "probability of "
         "dropping each recurrent weight, one mask per batch (DropConnect)"),
        ("--learning-rate", float, DEFAULTS.learning_rate, "Adam learning rate"),
        ("--batch-size", int, DEFAULTS.batch_size, "windows per mini-batch"),
        ("--epochs", int, DEFAULTS.epochs, "maximum number of epochs"),
        ("--patience", int, DEFAULTS.patience, "epochs without a lower "
         "validation loss before training stops"),
        ("--seed", int, DEFAULTS.seed, "random seed; the same seed repeats a run"),
    ]  # fmt: skip
    for flag, kind, default, text in options:
        group.add_argument(
            flag,
            type=kind,
            default=default,
            metavar="N" if kind is int else "X",
            help=f"{text} (default: %(default)s)",
        )


def _add_output_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument(
        "--out",
        default=default_out,
        metavar="DIR",
        help="output directory (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not draw the progress bar"
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="train on N local CPU processes with torch.distributed (gloo on "
        "127.0.0.1); under torchrun, leave this out (default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help=f"continue an interrupted run from the {RESUME_FILE} it wrote to its "
        "output directory; give the same options as that run",
    )


def _model_list(text: str) -> list[str]:
    return [name.strip().lower() for name in text.split(",") if name.strip()]


def _settings(args: argparse.Namespace, models: list[str], baselines: bool):
    return CompareSettings(
        data=args.data,
        columns=args.columns,
        date_column=args.date_column,
        fill=args.fill,
        season=args.season,
        horizon=args.horizon,
        context=args.context,
        models=models,
        strategy=args.strategy,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        dropout=args.dropout,
        recurrent_dropout=args.recurrent_dropout,
        zoneout=args.zoneout,
        weight_dropout=args.weight_dropout,
        epochs=args.epochs,
        patience=args.patience,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        baselines=baselines,
    )


def run_compare_command(args: argparse.Namespace) -> int:
    settings = _settings(args, args.models, baselines=True)
    result = _train(settings, Path(args.out), args.quiet, args.resume)
    if not distributed.is_main_process():
        return 0
    written = write_comparison(result, Path(args.out))
    print(format_table(result))
    _report_written([*written, Path(args.out) / RESUME_FILE], args.quiet)
    return 0


def run_train_command(args: argparse.Namespace) -> int:
    settings = _settings(args, [args.model], baselines=False)
    result = _train(settings, Path(args.out), args.quiet, args.resume)
    if not distributed.is_main_process():
        return 0
    written = write_comparison(result, Path(args.out), plot=False)
    print(format_table(result))
    _report_written([*written, Path(args.out) / RESUME_FILE], args.quiet)
    return 0


def run_forecast_command(args: argparse.Namespace) -> int:
    model, metadata = load_checkpoint(args.checkpoint)
    forecast = forecast_future(
        model, metadata, data=args.data, horizon=args.horizon, fill=args.fill
    )
    check_output_dir(Path(args.out))
    written = write_future(forecast, Path(args.out))

    column = forecast.series.columns[0]
    labels = (
        format_dates(pd.DatetimeIndex(forecast.dates))
        if forecast.dates is not None
        else [str(len(forecast.series) + k) for k in range(len(forecast.values))]
    )
    width = max(len(label) for label in labels)
    print(f"{'date' if forecast.dates is not None else 'row':<{width}}  {column}")
    for label, value in zip(labels, forecast.values, strict=True):
        print(f"{label:<{width}}  {value:.4g}")
    _report_written(written, quiet=False)
    return 0


def _train(
    settings: CompareSettings, out: Path, quiet: bool, resume: str | None
) -> CompareResult:
    # Every input is checked before training, and training before any file is
    # written, so that a bad input leaves the output directory untouched. The
    # resume checkpoint is the exception: it is written after every epoch.
    prepared = prepare(settings)
    check_output_dir(out)
    if resume is None:
        run_state = RunCheckpoint(out / RESUME_FILE, settings.to_dict())
    else:
        run_state = RunCheckpoint.resume(resume, out / RESUME_FILE, settings.to_dict())
    show_progress = not quiet and distributed.is_main_process()
    bar = ProgressBar(sys.stderr) if show_progress else None
    try:
        return run_compare(
            settings, progress=bar, prepared=prepared, run_state=run_state
        )
    finally:
        if bar is not None:
            bar.finish()


class ProgressBar:
    """Draw training progress on a stream: one redrawn line per model on a
    terminal, or a line every ``every`` epochs when the stream is a file."""

    WIDTH = 20

    def __init__(self, stream: TextIO, every: int = 10) -> None:
        self.stream = stream
        self.every = every
        self.interactive = stream.isatty()
        self.current: str | None = None

    def __call__(self, report: EpochReport) -> None:
        if self.interactive and self.current not in (None, report.name):
            self.stream.write("\n")
        self.current = report.name
        filled = round(self.WIDTH * report.epoch / report.epochs)
        line = (
            f"{report.name:<5} epoch {report.epoch:>4}/{report.epochs} "
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"loss {report.train_loss:.4f}  val {report.val_loss:.4f}  "
            f"best {report.best_val_loss:.4f}"
        )
        if self.interactive:
            self.stream.write("\r" + line)
        elif report.epoch == 1 or report.epoch % self.every == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.interactive and self.current is not None:
            self.stream.write("\n")
            self.stream.flush()


def format_table(result: CompareResult) -> str:
    """Format the results as a text table; '*' marks the best value per metric."""
    best = best_by_metric(result.results)
    header = ["model", "params", "time s", "epochs", *METRIC_LABELS.values()]
    rows = []
    for row in result.results:
        cells = [
            row.name,
            str(row.parameters),
            f"{row.seconds:.1f}",
            "-" if row.epochs is None else f"{row.epochs} ({row.best_epoch})",
        ]
        for metric in METRIC_LABELS:
            value = row.metrics[metric]
            text = "nan" if not math.isfinite(value) else f"{value:.4g}"
            cells.append(text + ("*" if best.get(metric) == row.name else " "))
        rows.append(cells)

    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = []
    for cells in [header, *rows]:
        first = cells[0].ljust(widths[0])
        pairs = zip(cells[1:], widths[1:], strict=True)
        rest = [cell.rjust(width) for cell, width in pairs]
        lines.append("  ".join([first, *rest]))
    lines.insert(1, "-" * len(lines[0]))

    series = result.prepared.series
    lines.append(
        f"\n{series.columns[0]} from {series.source}: horizon "
        f"{result.settings.horizon}, season {series.season}; epochs column: run "
        "(best); * best per metric"
    )
    return "\n".join(lines)


def _report_written(paths: list[Path], quiet: bool) -> None:
    """Print the names of those of ``paths`` that exist, on stderr."""
    paths = [path for path in paths if path.is_file()]
    if quiet or not paths:
        return
    names = ", ".join(path.name for path in paths)
    print(f"wrote {names} to {paths[0].parent}", file=sys.stderr)
