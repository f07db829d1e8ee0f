"""Implementations of one recurrent layer and direction, and the choice between them.

``run_direction`` is the one place where a layer's work is handed to an
implementation: the fused C++ kernels (``fused``) or the step-by-step
reference path (``reference``), as selected by ``backend``.
"""

from __future__ import annotations

import logging

from torch import Tensor

from rnnkit.kernels import backend, fused, reference

logger = logging.getLogger(__name__)

_warned_unavailable = False


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction; see ``reference.run_direction``."""
    if _use_fused(data):
        return fused.run_direction(mode, data, batch_sizes, state, weights, reverse)
    return reference.run_direction(mode, data, batch_sizes, state, weights, reverse)


def prepare() -> None:
    """Load the fused kernels now if the selected backend may run them.

    Their first load in a fresh extension directory compiles them, which
    takes about half a minute, so a training loop that reports its own time
    calls this before its clock starts. With the auto backend a failed load
    is only recorded here; the first run logs it, as without this call.
    """
    selected = backend.get_backend()
    if selected == "fused":
        fused.load()
    elif selected == "auto":
        fused.is_available()


def _use_fused(data: Tensor) -> bool:
    """Decide between the fused and the reference path for one run.

    Raises when the fused backend is requested but cannot serve the run.
    """
    global _warned_unavailable
    selected = backend.get_backend()
    if selected == "reference":
        return False

    # NOTE: CUDA tensors take the reference path. Handing them to cuDNN through
    # torch._VF would need both directions of a layer in one call, and this
    # dispatch sees one direction at a time; no GPU was available to test it.
    if data.device.type != "cpu":
        if selected == "fused":
            raise ValueError(
                f"the fused backend runs on CPU tensors only, got a tensor on "
                f"{data.device}; select the reference or auto backend"
            )
        return False
    if data.dtype not in fused.DTYPES:
        if selected == "fused":
            raise TypeError(
                "the fused backend supports float32 and float64, got "
                f"{data.dtype}; select the reference or auto backend"
            )
        return False

    if selected == "fused":
        fused.load()
        return True
    if fused.is_available():
        return True
    if not _warned_unavailable:
        _warned_unavailable = True
        logger.warning(
            "the fused kernels are unavailable, so the slower reference path is "
            "used: %s",
            fused.load_error(),
        )
    return False


__all__ = ["prepare", "run_direction"]
