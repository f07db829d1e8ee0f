"""Checks of the paths a command writes to, made before any work starts."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def output_directory(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """Create the output directory ``path`` and remove it again if the command fails.

    Raises ``ValueError`` when ``path`` is an existing file. A directory that
    existed before is left in place, whatever happens inside the block.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; expected a directory")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise


def check_output_file(path: str | Path, option: str) -> Path:
    """Return ``path`` after checking that a file can be written there.

    Raises ``ValueError`` when ``path`` is a directory or its parent directory
    does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; expected a file name")
    if not path.parent.is_dir():
        raise ValueError(
            f"{option} {path}: directory {path.parent} not found; create it first"
        )
    return path


def check_input_file(path: str | Path, what: str = "data file") -> Path:
    """Return ``path`` after checking that it is an existing file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"expected a {what}, got the directory {path}")
    if not path.exists():
        raise ValueError(f"{what} not found: {path}")
    return path
