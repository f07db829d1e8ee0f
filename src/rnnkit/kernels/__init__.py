"""Implementations of one recurrent layer and direction, and the choice between them.

``run_direction`` is the one place where a layer's work is handed to an
implementation. Today that is always the reference path.
"""

from __future__ import annotations

from torch import Tensor

from rnnkit.kernels import reference


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction; see ``reference.run_direction``."""
    return reference.run_direction(mode, data, batch_sizes, state, weights, reverse)
