"""Recurrent dropout, zoneout and DropConnect on W_hh: regularisers for training only.

Each is a probability p in [0, 1), set by a keyword-only constructor argument
of ``RNN``, ``LSTM`` and ``GRU`` (``recurrent_dropout``, ``zoneout``,
``weight_dropout``), and acts only in training mode. In eval mode, or with
p = 0, the layer computes exactly what the plain layer computes.

- Recurrent dropout (Gal and Ghahramani, 2016, "A Theoretically Grounded
  Application of Dropout in Recurrent Neural Networks"): the state h that
  enters ``W_hh h`` is multiplied by one mask m / (1 - p) per sequence, with
  m ~ Bernoulli(1 - p) of shape (B, H_out), reused at every step. In the GRU
  the term ``z * h`` keeps the undropped h.
- Zoneout (Krueger et al., 2017, "Zoneout: Regularizing RNNs by Randomly
  Preserving Hidden Activations"): at each step each unit of h, and of c for
  the LSTM, keeps its previous value with probability p, with one mask per
  step and state. Eval mode runs the plain layer, without zoneout.
- DropConnect on the recurrent weights (Merity et al., 2018, "Regularizing and
  Optimizing LSTM Language Models", weight drop): W_hh is multiplied by one
  mask m / (1 - p) per forward call, with m of W_hh's shape.

Masks come from the ``generator`` passed to ``forward`` or, without one, from
the global RNG of the input's device. For each layer and then each direction,
in this order: the W_hh mask (if ``weight_dropout``), the h mask (B, H_out)
(if ``recurrent_dropout``), then the zoneout masks (N, H_out) for h and
(N, H) for c (if ``zoneout``). The dropout masks are
``torch.bernoulli(torch.full(shape, 1 - p), generator=generator)``, where 1
keeps a unit. The zoneout masks are ``torch.bernoulli(torch.full(shape, p),
generator=generator)``, where 1 keeps the previous value. Rows are in the
packed order of ``rnnkit.sequence``: for padded input without lengths, the
zoneout mask of h viewed as (T, B, H_out) is indexed by step, then row.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit import cells, kernels
from rnnkit.kernels import reference

Step = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]
StepFactory = Callable[[tuple[Tensor | None, ...], Tensor | None], Step]


def check_probability(name: str, value) -> float:
    """Return ``value`` as a float after checking that it is a probability in [0, 1)."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not 0 <= value < 1
    ):
        raise ValueError(
            f"expected {name} to be a probability in [0, 1), got {value!r}"
        )
    return float(value)


def draw_mask(
    shape: tuple[int, ...],
    probability: float,
    generator: torch.Generator | None,
    like: Tensor,
) -> Tensor:
    """Draw a mask of 1 (with ``probability``) and 0, of ``like``'s dtype and device.

    With a generator, the mask is drawn on the generator's device and then
    moved to ``like``'s device.
    """
    device = like.device if generator is None else generator.device
    probabilities = torch.full(shape, probability, dtype=like.dtype, device=device)
    mask = torch.bernoulli(probabilities, generator=generator)
    return mask.to(like.device)


def gru_step(
    x_proj: Tensor, h: Tensor, h_recurrent: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> Tensor:
    r"""Return the next hidden state of a GRU whose W_hh product uses ``h_recurrent``.

    With recurrent dropout ``h_recurrent`` is the dropped-out h. The update
    term keeps the undropped h, so that dropout does not erase the memory:

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} \tilde h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} \tilde h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} \tilde h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h
    """
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h_recurrent, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def make_plain_step(
    mode: str, weights: tuple[Tensor | None, ...], recurrent_mask: Tensor | None
) -> Step:
    """Return the cell step of ``mode`` with the recurrent dropout mask applied to h.

    ``recurrent_mask`` is (B, H_out), already scaled by 1 / (1 - p). A step
    with fewer active rows uses the mask's first rows, as the packed layout does.
    """
    _, w_hh, _, b_hh, w_hr = weights

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h = state[0]
        h_recurrent = h if recurrent_mask is None else h * recurrent_mask[: len(h)]
        if mode == "LSTM":
            return cells.lstm_step(x_t, h_recurrent, state[1], w_hh, b_hh, w_hr)
        if mode == "GRU":
            return (gru_step(x_t, h, h_recurrent, w_hh, b_hh),)
        if mode == "RNN_TANH":
            return (cells.rnn_tanh_step(x_t, h_recurrent, w_hh, b_hh),)
        if mode == "RNN_RELU":
            return (cells.rnn_relu_step(x_t, h_recurrent, w_hh, b_hh),)
        raise ValueError(
            f"unknown recurrent mode {mode!r}; expected LSTM, GRU, RNN_TANH or RNN_RELU"
        )

    return step


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
    *,
    recurrent_dropout: float = 0.0,
    zoneout: float = 0.0,
    weight_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    make_step: StepFactory | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer and direction with the given regularisers.

    The caller passes zero probabilities in eval mode. Arguments are those of
    ``rnnkit.kernels.run_direction`` plus the three probabilities and the mask
    generator. ``make_step(weights, recurrent_mask)``
    and ``project(data)`` replace the plain cell (the layer-normalised layers
    use them); see ``reference.run_direction``.
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    if weight_dropout > 0:
        mask = draw_mask(tuple(w_hh.shape), 1 - weight_dropout, generator, w_hh)
        w_hh = w_hh * mask / (1 - weight_dropout)
        weights = (w_ih, w_hh, b_ih, b_hh, w_hr)

    # DropConnect alone changes only a weight, so any kernel can run it.
    if recurrent_dropout == 0 and zoneout == 0 and make_step is None:
        return kernels.run_direction(mode, data, batch_sizes, state, weights, reverse)

    recurrent_mask = None
    if recurrent_dropout > 0:
        h = state[0]
        recurrent_mask = draw_mask(
            tuple(h.shape), 1 - recurrent_dropout, generator, h
        ) / (1 - recurrent_dropout)

    zoneout_masks = None
    if zoneout > 0:
        rows = data.shape[0]
        zoneout_masks = tuple(
            draw_mask((rows, s.shape[1]), zoneout, generator, s) for s in state
        )

    if make_step is None:
        step = make_plain_step(mode, weights, recurrent_mask)
    else:
        step = make_step(weights, recurrent_mask)

    # NOTE: recurrent dropout and zoneout run on the reference path only,
    # because the fused kernels implement the plain cells without masks.
    return reference.run_direction(
        mode,
        data,
        batch_sizes,
        state,
        weights,
        reverse,
        project=project,
        step=step,
        zoneout=zoneout_masks,
    )
