"""The ``classify train`` and ``classify predict`` commands: a sequence classifier.

They parse options into the classifier task's settings, print progress,
scores and the confusion matrix, and write the checkpoint and predictions.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import TextIO

from rnnkit.cli.paths import check_input_file, check_output_file, output_directory
from rnnkit.cli.text_options import add_model_options
from rnnkit.files import write_atomically
from rnnkit.tasks.text.classifier import (
    ClassifierSettings,
    EpochProgress,
    Evaluation,
    check_labels,
    load_classifier,
    predict,
    score,
    split_rows,
    train_classifier,
)
from rnnkit.tasks.text.model import ClassifierConfig
from rnnkit.tasks.text.sequences import (
    SEQUENCE_KINDS,
    SequenceData,
    load_builtin_digits,
    read_sequences,
)

SETTINGS = ClassifierSettings()
MODEL = ClassifierConfig(0)
CHECKPOINT_NAME = "classifier.pt"
RESULTS_NAME = "results.json"
# The sequence and label columns of a data file when no option names them.
DEFAULT_COLUMNS = {"sequence": "sequence", "label": "label"}


def register(subparsers: argparse._SubParsersAction) -> None:
    classify = subparsers.add_parser(
        "classify",
        help="train a sequence classifier, or predict with one",
        description="Classify whole sequences (text or numbers) with a recurrent "
        "network.",
    )
    commands = classify.add_subparsers(dest="classify_command", metavar="COMMAND")
    classify.set_defaults(handler=lambda args: _print_help(classify))

    train = commands.add_parser(
        "train",
        help="train a classifier and score it on a held-out part",
        description="Train a classifier on labelled sequences (scikit-learn's "
        "handwritten digits, read row by row as 8 steps of 8 pixels, unless --data "
        "is given), report accuracy and the confusion matrix on a held-out test "
        "part, and write the checkpoint.",
    )
    _add_data_options(train)
    add_model_options(
        train,
        MODEL,
        embedding_help="size of the character embedding, for text",
        dropout_help="dropout between stacked layers",
    )
    training = train.add_argument_group("training")
    options = [
        ("--batch", int, SETTINGS.batch_size, "sequences per mini-batch"),
        ("--epochs", int, SETTINGS.epochs, "maximum number of epochs"),
        ("--patience", int, SETTINGS.patience, "epochs without a lower validation "
         "loss before training stops"),
        ("--lr", float, SETTINGS.learning_rate, "Adam learning rate"),
        ("--test-fraction", float, SETTINGS.test_fraction, "fraction of rows held "
         "out for the test"),
        ("--val-fraction", float, SETTINGS.validation_fraction, "fraction of rows "
         "held out for validation"),
        ("--seed", int, SETTINGS.seed, "random seed for the split, the weights "
         "and the batch order"),
    ]  # fmt: skip
    for flag, kind, default, text in options:
        training.add_argument(
            flag, type=kind, default=default, help=f"{text} (default: %(default)s)"
        )
    train.add_argument(
        "--out",
        default="runs/classify",
        help=f"output directory for {CHECKPOINT_NAME} and {RESULTS_NAME} "
        "(default: %(default)s)",
    )
    train.add_argument("--quiet", action="store_true", help="do not print progress")
    train.set_defaults(handler=run_train_command)

    run = commands.add_parser(
        "predict",
        help="predict the class of each sequence with a trained classifier",
        description="Predict the class of every sequence and write a CSV with "
        "columns row, prediction, probability (and label, when the data has "
        "labels, with the accuracy printed).",
    )
    run.add_argument(
        "--checkpoint", required=True, help="checkpoint file written by classify train"
    )
    _add_data_options(run, predicting=True)
    run.add_argument(
        "--out",
        default="predictions.csv",
        help="CSV file to write the predictions to (default: %(default)s)",
    )
    run.set_defaults(handler=run_predict_command)


def _add_data_options(
    parser: argparse.ArgumentParser, predicting: bool = False
) -> None:
    # A prediction takes the sequence kind, and by default the columns, from
    # the checkpoint.
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        help="a .csv file with a header row, or a .jsonl file with one object per "
        "line (default: the built-in handwritten digits)",
    )
    trained = " the column used in training, else" if predicting else ""
    group.add_argument(
        "--sequence-column",
        help="column with the sequence: text, or numbers separated by commas or "
        f"spaces, with ';' between steps of several features (default:{trained} "
        f"{DEFAULT_COLUMNS['sequence']})",
    )
    group.add_argument(
        "--label-column",
        help=f"column with the class label (default:{trained} "
        f"{DEFAULT_COLUMNS['label']})",
    )
    if not predicting:
        group.add_argument(
            "--sequence-kind",
            choices=SEQUENCE_KINDS,
            default="auto",
            help="read sequences as text (one step a character) or as numbers; "
            "auto picks numbers when every sequence parses as numbers "
            "(default: %(default)s)",
        )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _load_data(
    args: argparse.Namespace,
    require_labels: bool,
    kind: str,
    trained_columns: dict[str, str] | None = None,
) -> SequenceData:
    """Read --data, with the columns named by the options, else by
    ``trained_columns`` (those of a checkpoint's training data), else the
    defaults."""
    if args.data is None:
        return load_builtin_digits()
    columns = {**DEFAULT_COLUMNS, **(trained_columns or {})}
    return read_sequences(
        check_input_file(args.data),
        sequence_column=args.sequence_column or columns["sequence"],
        label_column=args.label_column or columns["label"],
        require_labels=require_labels,
        kind=kind,
    )


def run_train_command(args: argparse.Namespace) -> int:
    settings = ClassifierSettings(
        batch_size=args.batch,
        epochs=args.epochs,
        learning_rate=args.lr,
        patience=args.patience,
        test_fraction=args.test_fraction,
        validation_fraction=args.val_fraction,
        seed=args.seed,
    )
    config = ClassifierConfig(
        num_classes=2,
        cell=args.model,
        num_layers=args.layers,
        hidden_size=args.hidden,
        embedding_size=args.embedding,
        dropout=args.dropout,
    )

    # Check the data and settings before any file is created.
    settings.check()
    config.check()
    data = _load_data(args, require_labels=True, kind=args.sequence_kind)
    check_labels(data)
    split_rows(len(data.sequences), settings)

    with output_directory(args.out) as out:
        checkpoint_path = out / CHECKPOINT_NAME
        progress = None if args.quiet else EpochPrinter(sys.stderr)
        _, _, result = train_classifier(
            data, config, settings, progress=progress, checkpoint_path=checkpoint_path
        )
        summary = {"data": data.source, "kind": data.kind, **result.to_dict()}
        text = json.dumps(summary, indent=2) + "\n"
        write_atomically(out / RESULTS_NAME, lambda file: file.write(text.encode()))
    print(
        f"trained on {result.split['train']} sequences, stopped by "
        f"{result.stop_reason} at epoch {result.epochs} (best {result.best_epoch}) "
        f"after {result.seconds:.1f} s"
    )
    print(format_evaluation(result.test, "test"))
    print(f"wrote {checkpoint_path} and {out / RESULTS_NAME}", file=sys.stderr)
    return 0


def run_predict_command(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    model, encoder, classes, payload = load_classifier(args.checkpoint)
    trained_columns = payload.get("data", {}).get("columns")
    data = _load_data(args, False, encoder.kind, trained_columns)
    if data.kind != encoder.kind:
        raise ValueError(
            f"the classifier reads {encoder.kind} sequences, but {data.source} "
            f"has {data.kind}; pass the data it was trained for with --data"
        )
    indices, probabilities = predict(model, encoder, data.sequences)
    predicted = [classes[i] for i in indices]

    header = ["row", "prediction", "probability"]
    if data.labels is not None:
        header.append("label")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for position, row in enumerate(data.rows):
        line = [row, predicted[position], f"{probabilities[position]:.6f}"]
        if data.labels is not None:
            line.append(data.labels[position])
        writer.writerow(line)
    text = buffer.getvalue()
    write_atomically(args.out, lambda file: file.write(text.encode("utf-8")))

    print(f"predicted {len(predicted)} sequences; wrote {args.out}")
    if data.labels is not None:
        unknown = sorted({str(label) for label in data.labels} - set(map(str, classes)))
        if unknown:
            # The model can never predict these, so they count as errors.
            print(
                f"warning: {len(unknown)} label(s) in the data were not among the "
                f"classes the model was trained on ({', '.join(map(str, classes))}): "
                f"{', '.join(unknown[:10])}",
                file=sys.stderr,
            )
        majority = payload["result"]["test"]["majority_class"]
        evaluation = score(data.labels, predicted, classes, majority)
        print(format_evaluation(evaluation, "given"))
        if args.data is None:
            print(
                "note: the built-in digits include the rows the classifier may "
                "have been trained on, so this accuracy can overstate its "
                "accuracy on new data; results.json has the test accuracy",
                file=sys.stderr,
            )
    return 0


def format_evaluation(evaluation: Evaluation, part: str) -> str:
    """Format accuracy, the majority baseline and the confusion matrix as text."""
    lines = [
        f"accuracy on {evaluation.count} {part} sequences: "
        f"{evaluation.accuracy:.4f} (majority class {evaluation.majority_class!r}: "
        f"{evaluation.majority_accuracy:.4f})",
        "confusion matrix (rows: true class, columns: predicted class):",
    ]
    names = [str(name) for name in evaluation.classes]
    width = max(5, *(len(name) for name in names), len(str(evaluation.count)))
    lines.append(" " * width + " " + " ".join(f"{name:>{width}}" for name in names))
    for name, counts in zip(names, evaluation.confusion, strict=True):
        cells = " ".join(f"{count:>{width}}" for count in counts)
        lines.append(f"{name:>{width}} {cells}")
    return "\n".join(lines)


class EpochPrinter:
    """Write one line of classifier training progress per epoch to a stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, report: EpochProgress) -> None:
        self.stream.write(
            f"epoch {report.epoch:>3}/{report.epochs}  loss {report.train_loss:.4f}  "
            f"val {report.val_loss:.4f}  val accuracy {report.val_accuracy:.4f}  "
            f"{report.seconds:.0f} s\n"
        )
        self.stream.flush()
