"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes to a binary file.

    The data goes to a temporary file in the same directory, is flushed to
    disk, and then replaces ``path`` in one ``os.replace``. The temporary name
    starts with a dot and ends in ``.tmp``, so it never matches ``path``. On an
    error the temporary file is removed and ``path`` is left as it was. A
    writer killed before the rename leaves the temporary file behind.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        # mkstemp makes the file readable by its owner alone; give it the
        # permissions of any other new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_atomically(payload: object, path: str | Path) -> None:
    """Write ``payload`` with ``torch.save`` to ``path`` by ``write_atomically``."""
    write_atomically(path, lambda file: torch.save(payload, file))
