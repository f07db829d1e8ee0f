"""The reference path: one layer and direction, one Python step at a time.

It is the path that always works, with any input form and any autograd use
(double backward included), and the oracle every fused kernel is tested
against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import cells


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
    *,
    project: Callable[[Tensor], Tensor] | None = None,
    step: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]] | None = None,
    zoneout: tuple[Tensor | None, ...] | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction over a time-major packed sequence.

    ``data`` is (N, I): the rows of step t are the ``batch_sizes[t]`` rows that
    follow those of step t - 1, and the rows of every step are a prefix of the
    batch, sorted by decreasing length. ``state`` is ``(h,)`` or ``(h, c)``, each
    (B, *) with B = ``max(batch_sizes)``; a row outside a step's prefix keeps its
    state unchanged. Returns the outputs (N, H_out) in the same layout as
    ``data`` and the final state of every row.

    The keyword arguments replace parts of the plain cell, for the features
    beyond ``torch.nn``. ``project(data)`` replaces ``W_ih x + b_ih``.
    ``step(x_t, state)`` replaces the cell step of ``mode`` and receives only
    the rows active at step t. ``zoneout`` contains one mask (N, *) per state
    tensor, or None for a state without zoneout, in the layout of ``data``:
    where a mask is 1, the unit keeps its previous value at that step.
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    x_proj = F.linear(data, w_ih, b_ih) if project is None else project(data)

    offsets = [0]
    for size in batch_sizes:
        offsets.append(offsets[-1] + size)
    steps = range(len(batch_sizes))
    outputs: list[Tensor] = [data.new_empty(0)] * len(batch_sizes)

    for t in reversed(steps) if reverse else steps:
        size = batch_sizes[t]
        x_t = x_proj[offsets[t] : offsets[t + 1]]
        active = tuple(s[:size] for s in state)
        if step is None:
            new = _step(mode, x_t, active, w_hh, b_hh, w_hr)
        else:
            new = step(x_t, active)
        if zoneout is not None:
            new = _zone_out(new, active, zoneout, offsets[t], offsets[t + 1])
        if size < state[0].shape[0]:
            new = tuple(
                torch.cat((n, s[size:])) for n, s in zip(new, state, strict=True)
            )
        state = new
        outputs[t] = new[0][:size]

    if not outputs:
        return x_proj.new_empty(0, state[0].shape[1]), state
    return torch.cat(outputs), state


def _zone_out(
    new: tuple[Tensor, ...],
    previous: tuple[Tensor, ...],
    masks: tuple[Tensor | None, ...],
    start: int,
    stop: int,
) -> tuple[Tensor, ...]:
    """Keep each unit's previous value where its zoneout mask is 1."""
    result = []
    for n, p, mask in zip(new, previous, masks, strict=True):
        if mask is None:
            result.append(n)
        else:
            keep = mask[start:stop]
            result.append(keep * p + (1 - keep) * n)
    return tuple(result)


def _step(
    mode: str,
    x_t: Tensor,
    state: tuple[Tensor, ...],
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
) -> tuple[Tensor, ...]:
    if mode == "LSTM":
        return cells.lstm_step(x_t, state[0], state[1], w_hh, b_hh, w_hr)
    if mode == "GRU":
        return (cells.gru_step(x_t, state[0], w_hh, b_hh),)
    if mode == "RNN_TANH":
        return (cells.rnn_tanh_step(x_t, state[0], w_hh, b_hh),)
    if mode == "RNN_RELU":
        return (cells.rnn_relu_step(x_t, state[0], w_hh, b_hh),)
    raise ValueError(
        f"unknown recurrent mode {mode!r}; expected LSTM, GRU, RNN_TANH or RNN_RELU"
    )
