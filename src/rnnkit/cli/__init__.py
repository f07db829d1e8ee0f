"""The ``rnnkit`` command line: a thin shell over the tasks.

Each command lives in its own module, which exposes ``register(subparsers)``.
A command's handler returns an exit code. Errors that the user can fix
(``ValueError``, ``OSError``, an allocation too large for the machine) become
one line on stderr and exit code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = [
    "rnnkit.cli.forecast",
    "rnnkit.cli.demo",
    "rnnkit.cli.explain",
    "rnnkit.cli.text",
    "rnnkit.cli.classify",
    "rnnkit.cli.bench",
]


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line.

    An unrecognized argument is reported with the help of the command that
    was parsing when it was met, not that of ``rnnkit`` itself.
    """

    def error(self, message: str):
        self.exit(2, f"rnnkit: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # The innermost command parses first, so it names itself first.
        if extras and not hasattr(namespace, "_command_prog"):
            namespace._command_prog = self.prog
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(namespace, "_command_prog", self.prog)
            self.exit(
                2,
                f"rnnkit: error: unrecognized arguments: {' '.join(extras)} "
                f"(see '{prog} --help')\n",
            )
        return namespace


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__

    parser = ArgumentParser(
        prog="rnnkit",
        description="Train, compare, forecast and explain recurrent sequence models.",
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="rnnkit: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # The reader of standard output closed it (rnnkit ... | head), which
        # ends the output, as in other command-line tools. Standard output is
        # pointed at /dev/null so that Python's final flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as error:
        print(f"rnnkit: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        # An allocation too large for this machine (a huge --hidden-size, say)
        # is a setting the user can change; any other RuntimeError is a bug.
        if isinstance(error, RuntimeError) and "can't allocate memory" not in str(
            error
        ):
            raise
        print(
            "rnnkit: error: out of memory; choose smaller sizes "
            f"({' '.join(str(error).split())[:200]})",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130
