r"""Layer-normalised LSTM and GRU (Ba, Kiros and Hinton, 2016, "Layer Normalization").

The input product :math:`W_{ih} x` and the recurrent product :math:`W_{hh} h`
are normalised separately over their G*H gate pre-activations, each with its
own learnable gain, and the LSTM also normalises its cell state before the
output tanh:

.. math::
    \mathrm{LN}(a; \gamma, \beta) = \gamma \odot \frac{a - \mu(a)}
        {\sqrt{\sigma^2(a) + \epsilon}} + \beta

The layer's ``bias_ih`` and ``bias_hh`` are the β of the two products, so the
parameters of ``torch.nn`` keep their names and shapes, and each layer and
direction adds ``gain_ih``, ``gain_hh`` (G*H,) and, for the LSTM, ``gain_c``
and ``bias_c`` (H,). Gains start at 1 and ``bias_c`` at 0. The other
parameters are drawn as ``torch.nn`` draws them, so the same seed gives the
same ``weight_ih``, ``weight_hh`` and biases as ``torch.nn.LSTM`` or ``GRU``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import regularize
from rnnkit.layers import GRU, LSTM

EPS = 1e-5


def layer_norm(a: Tensor, gain: Tensor, bias: Tensor | None) -> Tensor:
    """Normalise ``a`` over its last dimension, scale by ``gain``, add ``bias``."""
    return F.layer_norm(a, a.shape[-1:], gain, bias, EPS)


def layer_norm_lstm_step(
    x_proj: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    gain_hh: Tensor,
    gain_c: Tensor,
    bias_c: Tensor | None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Return the next hidden and cell state of a layer-normalised LSTM.

    ``x_proj`` is the normalised input product :math:`\mathrm{LN}(W_{ih} x;
    \gamma_{ih}, b_{ih})`.

    .. math::
        (i, f, g, o) &= x_{proj} + \mathrm{LN}(W_{hh} h; \gamma_{hh}, b_{hh}) \\
        c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' &= \sigma(o) \odot \tanh(\mathrm{LN}(c'; \gamma_c, \beta_c))
            \quad (h' = W_{hr} h' \text{ with a projection})
    """
    gates = x_proj + layer_norm(F.linear(h, w_hh), gain_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(layer_norm(c_next, gain_c, bias_c))
    if w_hr is not None:
        h_next = F.linear(h_next, w_hr)
    return h_next, c_next


def layer_norm_gru_step(
    x_proj: Tensor,
    h: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    gain_hh: Tensor,
    h_recurrent: Tensor | None = None,
) -> Tensor:
    r"""Return the next hidden state of a layer-normalised GRU.

    ``x_proj`` is the normalised input product :math:`\mathrm{LN}(W_{ih} x;
    \gamma_{ih}, b_{ih})`, split into :math:`x_r, x_z, x_n`. The recurrent
    product uses ``h_recurrent`` (the dropped-out h with recurrent dropout),
    h by default:

    .. math::
        (h_r, h_z, h_n) &= \mathrm{LN}(W_{hh} \tilde h; \gamma_{hh}, b_{hh}) \\
        r &= \sigma(x_r + h_r) \\
        z &= \sigma(x_z + h_z) \\
        n &= \tanh(x_n + r \odot h_n) \\
        h' &= (1 - z) \odot n + z \odot h
    """
    if h_recurrent is None:
        h_recurrent = h
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    recurrent = layer_norm(F.linear(h_recurrent, w_hh), gain_hh, b_hh)
    h_r, h_z, h_n = recurrent.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


class _LayerNormMixin:
    """The norm parameters and per-direction run of the layer-normalised layers."""

    def _add_norm_parameters(self, device, dtype) -> None:
        factory = {"device": device, "dtype": dtype}
        gate_size = self.weight_ih_l0.shape[0]
        self._norm_names: list[str] = []
        for names in self._all_weights:
            suffix = names[0][len("weight_ih") :]
            shapes = {"gain_ih": gate_size, "gain_hh": gate_size}
            if self.mode == "LSTM":
                shapes["gain_c"] = self.hidden_size
                if self.bias:
                    shapes["bias_c"] = self.hidden_size
            for kind, size in shapes.items():
                setattr(self, kind + suffix, nn.Parameter(torch.empty(size, **factory)))
                self._norm_names.append(kind + suffix)
        self._reset_norm_parameters()

    def reset_parameters(self) -> None:
        """Draw the ``torch.nn`` parameters as ``torch.nn`` does, then reset the norms.

        Gains become 1 and ``bias_c`` 0.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self._flat_weights_names:
            nn.init.uniform_(getattr(self, name), -bound, bound)
        self._reset_norm_parameters()

    def _reset_norm_parameters(self) -> None:
        for name in getattr(self, "_norm_names", []):
            with torch.no_grad():
                getattr(self, name).fill_(0.0 if name.startswith("bias") else 1.0)

    def _run_direction(self, index, data, batch_sizes, state, reverse, generator):
        weights = self._direction_weights(index)
        suffix = self._all_weights[index][0][len("weight_ih") :]
        w_ih, _, b_ih, _, _ = weights
        gain_ih = getattr(self, "gain_ih" + suffix)
        gain_hh = getattr(self, "gain_hh" + suffix)

        def project(rows: Tensor) -> Tensor:
            return layer_norm(F.linear(rows, w_ih), gain_ih, b_ih)

        if self.mode == "LSTM":
            make_step = partial(
                _make_lstm_step,
                gain_hh=gain_hh,
                gain_c=getattr(self, "gain_c" + suffix),
                bias_c=getattr(self, "bias_c" + suffix, None),
            )
        else:
            make_step = partial(_make_gru_step, gain_hh=gain_hh)

        # NOTE: layer-normalised layers always run on the reference path,
        # because the fused kernels implement only the plain cells.
        training = self.training
        return regularize.run_direction(
            self.mode,
            data,
            batch_sizes,
            state,
            weights,
            reverse,
            recurrent_dropout=self.recurrent_dropout if training else 0.0,
            zoneout=self.zoneout if training else 0.0,
            weight_dropout=self.weight_dropout if training else 0.0,
            generator=generator,
            make_step=make_step,
            project=project,
        )

    def to_torch(self) -> nn.Module:
        raise TypeError(
            f"{type(self).__name__} has no torch.nn equivalent: torch.nn has no "
            "layer-normalised recurrent layer"
        )


def _make_lstm_step(weights, recurrent_mask, *, gain_hh, gain_c, bias_c):
    _, w_hh, _, b_hh, w_hr = weights

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h, c = state
        if recurrent_mask is not None:
            h = h * recurrent_mask[: len(h)]
        return layer_norm_lstm_step(
            x_t, h, c, w_hh, b_hh, gain_hh, gain_c, bias_c, w_hr
        )

    return step


def _make_gru_step(weights, recurrent_mask, *, gain_hh):
    _, w_hh, _, b_hh, _ = weights

    def step(x_t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (h,) = state
        h_recurrent = None if recurrent_mask is None else h * recurrent_mask[: len(h)]
        return (layer_norm_gru_step(x_t, h, w_hh, b_hh, gain_hh, h_recurrent),)

    return step


class LayerNormLSTM(_LayerNormMixin, LSTM):
    r"""A multi-layer LSTM with layer normalisation, as in ``layer_norm_lstm_step``.

    Arguments, input forms and results are those of ``rnnkit.LSTM``, including
    ``proj_size``, ``lengths=`` and the regularisers. The parameters are
    ``rnnkit.LSTM``'s plus ``gain_ih``, ``gain_hh``, ``gain_c`` and ``bias_c``
    per layer and direction.

    >>> layer = LayerNormLSTM(input_size=1, hidden_size=2, batch_first=True)
    >>> output, (h_n, c_n) = layer(torch.tensor([[[0.1], [0.2], [0.3]]]))
    >>> tuple(output.shape), tuple(c_n.shape)
    ((1, 3, 2), (1, 1, 2))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size, device, dtype,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_dropout=weight_dropout,
        )  # fmt: skip
        self._add_norm_parameters(device, dtype)


class LayerNormGRU(_LayerNormMixin, GRU):
    r"""A multi-layer GRU with layer normalisation, as in ``layer_norm_gru_step``.

    Arguments, input forms and results are those of ``rnnkit.GRU``, including
    ``lengths=`` and the regularisers. The parameters are ``rnnkit.GRU``'s plus
    ``gain_ih`` and ``gain_hh`` per layer and direction.

    >>> layer = LayerNormGRU(input_size=1, hidden_size=2, batch_first=True)
    >>> output, h_n = layer(torch.tensor([[[0.1], [0.2], [0.3]]]))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((1, 3, 2), (1, 1, 2))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, device, dtype,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_dropout=weight_dropout,
        )  # fmt: skip
        self._add_norm_parameters(device, dtype)
