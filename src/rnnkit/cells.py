"""The equations of one time step for each recurrent cell: the reference.

Each step takes the input projection ``x_proj = W_ih x + b_ih`` already
computed (for a whole sequence that is one matrix product), the previous state
and the recurrent weights, and returns the new state. Gate order and bias
placement follow ``torch.nn``: LSTM gates i, f, g, o; GRU gates r, z, n with
the reset gate applied to the recurrent product plus its bias.

Shapes: ``x_proj`` is (B, G*H), ``h`` is (B, H) (or (B, P) for an LSTM with a
projection), ``c`` is (B, H), ``w_hh`` is (G*H, H) (or (G*H, P)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rnn_tanh_step(
    x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> Tensor:
    r"""Return the next hidden state of an Elman RNN with tanh.

    .. math::
        h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})
    """
    return torch.tanh(x_proj + F.linear(h, w_hh, b_hh))


def rnn_relu_step(
    x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> Tensor:
    r"""Return the next hidden state of an Elman RNN with ReLU.

    .. math::
        h' = \max(0, W_{ih} x + b_{ih} + W_{hh} h + b_{hh})
    """
    return torch.relu(x_proj + F.linear(h, w_hh, b_hh))


def lstm_step(
    x_proj: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Return the next hidden and cell state of an LSTM.

    .. math::
        i &= \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f &= \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g &= \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o &= \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' &= f \odot c + i \odot g \\
        h' &= o \odot \tanh(c') \quad (h' = W_{hr} h' \text{ with a projection})
    """
    i, f, g, o = (x_proj + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    if w_hr is not None:
        h_next = F.linear(h_next, w_hr)
    return h_next, c_next


def gru_step(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    r"""Return the next hidden state of a GRU.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h
    """
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h
