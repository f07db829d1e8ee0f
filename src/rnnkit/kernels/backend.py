"""The choice of implementation for the layers: reference, fused, or auto.

The environment variable ``RNNKIT_BACKEND`` sets the starting choice;
``set_backend`` changes it for the process and ``use_backend`` for a block.

- ``reference``: the step-by-step Python path, always.
- ``fused``: the fused C++ kernels; a run they cannot serve raises an error.
- ``auto`` (the default): the fused kernels where they apply, else the
  reference path; if the kernels cannot be built or loaded, one warning is
  logged and the reference path is used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

BACKENDS = ("reference", "fused", "auto")
ENVIRONMENT_VARIABLE = "RNNKIT_BACKEND"

_selected: str | None = None


def _check(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"expected {source} to be one of {', '.join(BACKENDS)}, got {name!r}"
        )
    return name  # type: ignore[return-value]


def get_backend() -> str:
    """Return the selected backend: set_backend's, else RNNKIT_BACKEND's, else auto."""
    if _selected is not None:
        return _selected
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if not value:
        return "auto"
    return _check(value, f"the environment variable {ENVIRONMENT_VARIABLE}")


def set_backend(name: str | None) -> None:
    """Select the backend for this process; None returns to RNNKIT_BACKEND or auto."""
    global _selected
    _selected = None if name is None else _check(name, "the backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select the backend inside a ``with`` block and restore the previous choice."""
    global _selected
    checked = _check(name, "the backend")
    previous = _selected
    _selected = checked
    try:
        yield
    finally:
        _selected = previous
