"""The ``text train`` and ``text generate`` commands: a character language model.

They parse options into the text task's settings, draw the progress bar on
stderr and print the results; the task trains, samples and writes checkpoints.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from rnnkit import distributed
from rnnkit.cli.paths import check_input_file
from rnnkit.cli.text_options import add_model_options
from rnnkit.files import write_atomically
from rnnkit.resume import RunCheckpoint
from rnnkit.tasks.text.language_model import (
    LN2,
    Progress,
    TrainSettings,
    load_language_model,
    prepare_text,
    train_language_model,
)
from rnnkit.tasks.text.model import LanguageModelConfig
from rnnkit.tasks.text.sampling import check_sampling, generate
from rnnkit.tasks.text.vocabulary import read_corpus

SETTINGS = TrainSettings()
MODEL = LanguageModelConfig(0)
CHECKPOINT_NAME = "model.pt"
RESULTS_NAME = "results.json"
# Written to the output directory at each evaluation, and read by --resume.
RESUME_NAME = "resume.pt"


def register(subparsers: argparse._SubParsersAction) -> None:
    text = subparsers.add_parser(
        "text",
        help="train a character language model on a text file, or sample from one",
        description="Character-level (or byte-level) language models.",
    )
    commands = text.add_subparsers(dest="text_command", metavar="COMMAND")
    text.set_defaults(handler=lambda args: _print_help(text))

    train = commands.add_parser(
        "train",
        help="train a language model and write its checkpoint",
        description="Train a character language model on a text file by truncated "
        "backpropagation through time. The last 10% of the text is held out for "
        "validation, which drives early stopping; the checkpoint holds the "
        "weights of the lowest validation loss.",
    )
    train.add_argument("--data", required=True, help="UTF-8 text file to train on")
    train.add_argument(
        "--bytes",
        action="store_true",
        help="model bytes (256 symbols) instead of characters; reads any file",
    )
    add_model_options(
        train,
        MODEL,
        embedding_help="size of the symbol embedding",
        dropout_help="dropout between layers and before the output",
    )

    training = train.add_argument_group("training")
    training.add_argument(
        "--seq-len",
        type=int,
        default=SETTINGS.seq_len,
        help="steps of backpropagation through time per chunk (default: %(default)s)",
    )
    training.add_argument(
        "--batch",
        "--batch-size",
        type=int,
        default=SETTINGS.batch_size,
        help="parallel streams the text is split into (default: %(default)s)",
    )
    length = training.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=int,
        default=SETTINGS.epochs,
        help="maximum passes over the training text (default: %(default)s)",
    )
    length.add_argument(
        "--max-steps",
        type=int,
        help="optimiser steps to take, in place of --epochs",
    )
    training.add_argument(
        "--eval-every",
        type=int,
        help="optimiser steps between validation runs (default: once per epoch)",
    )
    training.add_argument(
        "--patience",
        type=int,
        default=SETTINGS.patience,
        help="validation runs without a lower loss before training stops "
        "(default: %(default)s)",
    )
    training.add_argument(
        "--lr",
        "--learning-rate",
        type=float,
        default=SETTINGS.learning_rate,
        help="Adam learning rate (default: %(default)s)",
    )
    training.add_argument(
        "--clip",
        type=float,
        default=SETTINGS.max_grad_norm,
        help="maximum gradient norm (default: %(default)s)",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=SETTINGS.seed,
        help="random seed; the same seed repeats a run (default: %(default)s)",
    )
    train.add_argument(
        "--out",
        default="runs/text",
        help=f"output directory for {CHECKPOINT_NAME} and {RESULTS_NAME} "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--quiet", action="store_true", help="do not draw the progress bar"
    )
    train.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="train on N local CPU processes with torch.distributed (gloo on "
        "127.0.0.1), each on its share of the --batch streams; under torchrun, "
        "leave this out (default: %(default)s)",
    )
    train.add_argument(
        "--resume",
        metavar="PATH",
        help=f"continue an interrupted run from the {RESUME_NAME} it wrote to its "
        "output directory; give the same options as that run",
    )
    train.set_defaults(
        handler=functools.partial(distributed.run_command, run_train_command)
    )

    sample = commands.add_parser(
        "generate",
        help="sample text from a trained language model",
        description="Read the prompt to set the model's state, then sample one "
        "symbol at a time and print the prompt followed by the sample.",
    )
    sample.add_argument(
        "--checkpoint", required=True, help="checkpoint file written by text train"
    )
    sample.add_argument(
        "--prompt",
        help="text to start from; every character must be in the model's "
        "vocabulary (default: a newline, or the first character of the training "
        "text when it has no newline)",
    )
    sample.add_argument(
        "--length",
        type=int,
        default=500,
        help="symbols to sample (default: %(default)s)",
    )
    sample.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="divides the logits: below 1 is more conservative, above 1 more "
        "varied (default: %(default)s)",
    )
    sample.add_argument(
        "--top-k",
        type=int,
        help="sample only from the K most likely symbols (default: all)",
    )
    sample.add_argument(
        "--seed",
        type=int,
        help="random seed; the same seed repeats the sample (default: random)",
    )
    sample.set_defaults(handler=run_generate_command)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_train_command(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        seq_len=args.seq_len,
        batch_size=args.batch,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        max_grad_norm=args.clip,
        patience=args.patience,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    config = LanguageModelConfig(
        vocab_size=0,
        cell=args.model,
        num_layers=args.layers,
        hidden_size=args.hidden,
        embedding_size=args.embedding,
        dropout=args.dropout,
    )

    # Check the data and settings before any file is created.
    corpus = read_corpus(check_input_file(args.data), byte_level=args.bytes)
    prepared = prepare_text(corpus, settings)
    config.vocab_size = len(prepared.vocabulary)
    config.check()

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a directory")
    run_settings = {
        "data": str(args.data),
        "bytes": args.bytes,
        "model": config.to_dict(),
        "settings": settings.to_dict(),
    }
    if args.resume is None:
        run_state = RunCheckpoint(out / RESUME_NAME, run_settings)
    else:
        run_state = RunCheckpoint.resume(args.resume, out / RESUME_NAME, run_settings)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT_NAME
    show_progress = not args.quiet and distributed.is_main_process()
    bar = StepProgressBar(sys.stderr) if show_progress else None
    try:
        model, vocabulary, result = train_language_model(
            prepared,
            config,
            settings,
            progress=bar,
            checkpoint_path=checkpoint_path,
            save_state=lambda state: run_state.save_training("model", state),
            resume_from=run_state.training_state("model"),
        )
    finally:
        if bar is not None:
            bar.finish()
    if not distributed.is_main_process():
        return 0

    summary = {
        "data": str(args.data),
        "vocabulary": {"kind": vocabulary.kind, "size": len(vocabulary)},
        "model": config.to_dict(),
        "settings": settings.to_dict(),
        "result": result.to_dict(),
    }
    text = json.dumps(summary, indent=2) + "\n"
    write_atomically(out / RESULTS_NAME, lambda file: file.write(text.encode()))
    print(
        f"best validation loss {result.best_val_loss:.4f} nats "
        f"({result.best_val_bpc:.4f} bpc) at step {result.best_step} of "
        f"{result.steps}; stopped by {result.stop_reason} after "
        f"{result.seconds:.1f} s"
    )
    print(f"wrote {checkpoint_path} and {out / RESULTS_NAME}", file=sys.stderr)
    return 0


def run_generate_command(args: argparse.Namespace) -> int:
    model, vocabulary, payload = load_language_model(args.checkpoint)
    check_sampling(args.temperature, args.top_k, len(vocabulary))
    prompt = args.prompt if args.prompt is not None else payload["default_prompt"]
    sample = generate(
        model,
        vocabulary,
        prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    sys.stdout.write(prompt + sample + "\n")
    return 0


class StepProgressBar:
    """Draw language-model training progress on a stream.

    On a terminal, one line is redrawn at most ``per_second`` times a second
    and at every evaluation. On a file or pipe, one line is written per
    evaluation.
    """

    WIDTH = 20

    def __init__(self, stream: TextIO, per_second: float = 4.0) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.interval = 1.0 / per_second
        self.last_draw = 0.0
        self.drawn = False
        self.val_text = ""

    def __call__(self, report: Progress) -> None:
        if report.val_loss is not None:
            val_bpc = report.val_loss / LN2
            self.val_text = f"  val {report.val_loss:.4f} ({val_bpc:.3f} bpc)"
        now = time.monotonic()
        due = now - self.last_draw >= self.interval or report.step == report.total_steps
        if report.val_loss is None and not (self.interactive and due):
            return
        self.last_draw = now
        filled = round(self.WIDTH * report.step / report.total_steps)
        line = (
            f"step {report.step:>6}/{report.total_steps} "
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"loss {report.train_loss:.4f} ({report.train_bpc:.3f} bpc)"
            f"{self.val_text}  {report.seconds:.0f} s"
        )
        if self.interactive:
            self.stream.write("\r" + line + "\x1b[K")
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
