r"""minGRU and minLSTM (Feng et al., 2024, "Were RNNs All We Needed?").

The paper is arXiv:2410.01201.

Their gates depend on the input only, never on h, so the recurrence is linear
in h:

.. math::
    h_t = a_t \odot h_{t-1} + b_t

with :math:`a_t \in (0, 1)` and :math:`b_t > 0`. A linear recurrence can be
computed for all t at once. The parallel mode uses the log-space scan of
Heinsen (2023, "Efficient Parallelization of a Ubiquitous Sequential
Computation", arXiv:2311.06281): with :math:`a^*_t = \sum_{s \le t} \log a_s`,

.. math::
    h_t = e^{a^*_t} h_0 + \exp\Big(a^*_t + \operatorname{logcumsumexp}_{s \le t}
        (\log b_s - a^*_s)\Big)

The term in h_0 is kept apart from the logarithms, so h_0 may have any sign.
The sequential mode runs the step functions below one step at a time, and
the two agree to rounding error.

The candidate state goes through :math:`g(x) = x + 1/2` for :math:`x \ge 0`
and :math:`\sigma(x)` otherwise, which keeps it positive, as in the paper's
log-space version.

Shapes: T time, B batch, I input features, H hidden, L layers, D directions.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from rnnkit import sequence
from rnnkit.layers import _check_constructor_args

# Steps per block of the parallel scan. Blocks run one after another, each
# scanned in parallel, because a^*_t + logcumsumexp(...) cancels and its
# rounding error grows with |a^*_t|. In float32 at T = 4096, the maximum
# difference from the sequential steps was about 5e-6 with blocks of 64 and
# 3e-4 with one block, at 1.4 times the time of one block (see
# docs/minimal-rnn.md).
SCAN_BLOCK = 64


def g(x: Tensor) -> Tensor:
    """Map a pre-activation to a positive candidate state: x + 1/2 or sigmoid(x)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """Return log g(x), computed without taking the log of a small number."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def min_gru_step(x_proj: Tensor, h: Tensor) -> Tensor:
    r"""Return the next hidden state of a minGRU.

    ``x_proj`` is :math:`W x + b`, split into the update gate and candidate
    pre-activations :math:`k_z, k_h`.

    .. math::
        z &= \sigma(k_z) \\
        \tilde h &= g(k_h) \\
        h' &= (1 - z) \odot h + z \odot \tilde h
    """
    k_z, k_h = x_proj.chunk(2, dim=-1)
    z = torch.sigmoid(k_z)
    h_tilde = g(k_h)
    return (1 - z) * h + z * h_tilde


def min_lstm_step(x_proj: Tensor, h: Tensor) -> Tensor:
    r"""Return the next hidden state of a minLSTM.

    ``x_proj`` is :math:`W x + b`, split into the forget gate, input gate and
    candidate pre-activations :math:`k_f, k_i, k_h`.

    .. math::
        f &= \sigma(k_f), \quad i = \sigma(k_i) \\
        f' &= f / (f + i), \quad i' = i / (f + i) \\
        \tilde h &= g(k_h) \\
        h' &= f' \odot h + i' \odot \tilde h
    """
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)
    f = torch.sigmoid(k_f)
    i = torch.sigmoid(k_i)
    h_tilde = g(k_h)
    return f / (f + i) * h + i / (f + i) * h_tilde


def min_gru_log_coefficients(x_proj: Tensor) -> tuple[Tensor, Tensor]:
    """Return (log a, log b) of the minGRU recurrence h' = a h + b."""
    k_z, k_h = x_proj.chunk(2, dim=-1)
    log_a = -F.softplus(k_z)  # log(1 - z)
    log_b = -F.softplus(-k_z) + log_g(k_h)  # log z + log g(k_h)
    return log_a, log_b


def min_lstm_log_coefficients(x_proj: Tensor) -> tuple[Tensor, Tensor]:
    """Return (log a, log b) of the minLSTM recurrence h' = a h + b."""
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)
    # log(i / f), from log f = -softplus(-k_f) and log i = -softplus(-k_i).
    log_ratio = F.softplus(-k_f) - F.softplus(-k_i)
    log_a = -F.softplus(log_ratio)  # log f' = -log(1 + i / f)
    log_b = -F.softplus(-log_ratio) + log_g(k_h)  # log i' + log g(k_h)
    return log_a, log_b


def log_space_scan(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """Return every h_t of h_t = a_t h_{t-1} + b_t, from log a and log b (T, B, H).

    ``h0`` is (B, H) and may have any sign. The scan runs in blocks of
    ``SCAN_BLOCK`` steps, each in parallel, carrying h from block to block.
    """
    outputs = []
    h = h0
    for start in range(0, log_a.shape[0], SCAN_BLOCK):
        block_a = log_a[start : start + SCAN_BLOCK]
        block_b = log_b[start : start + SCAN_BLOCK]
        a_star = torch.cumsum(block_a, dim=0)
        from_inputs = torch.exp(a_star + torch.logcumsumexp(block_b - a_star, dim=0))
        block = torch.exp(a_star) * h + from_inputs
        outputs.append(block)
        h = block[-1]
    if not outputs:
        return log_a.new_empty(0, *h0.shape)
    return torch.cat(outputs)


class _MinimalBase(nn.Module):
    """The multi-layer layer shared by ``MinGRU`` and ``MinLSTM``."""

    gates: int
    _step = staticmethod(min_gru_step)
    _log_coefficients = staticmethod(min_gru_log_coefficients)

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
    ) -> None:
        super().__init__()
        _check_constructor_args(
            "MIN", input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, 0,
        )  # fmt: skip
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout is applied between layers, so it has no effect with "
                f"num_layers=1, got dropout={dropout}",
                stacklevel=3,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional

        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        self._suffixes: list[str] = []
        for layer in range(num_layers):
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                layer_input_size = (
                    input_size if layer == 0 else hidden_size * directions
                )
                shape = (self.gates * hidden_size, layer_input_size)
                weight = nn.Parameter(torch.empty(shape, **factory))
                setattr(self, "weight_ih" + suffix, weight)
                if bias:
                    bias_shape = (self.gates * hidden_size,)
                    value = nn.Parameter(torch.empty(bias_shape, **factory))
                    setattr(self, "bias_ih" + suffix, value)
                self._suffixes.append(suffix)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), like ``torch.nn.GRU``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        return text

    def forward(self, input, hx=None, *, lengths=None, parallel=None):
        """Run the layer over a sequence batch; return ``(output, h_n)``.

        ``input`` is (T, B, I), (B, T, I) with ``batch_first``, (T, I)
        unbatched, or a ``PackedSequence``. ``hx`` is h0 (L*D, B, H), or
        (L*D, H) unbatched. ``lengths`` (keyword-only, padded input only) gives
        each row's number of valid steps, as for ``rnnkit.GRU``.
        ``parallel=True`` runs the log-space scan and ``parallel=False`` the
        sequential steps. The default, None, scans when T > 1 and steps when
        T = 1.

        Returns output (T, B, D*H) in the input's form and h_n (L*D, B, H).
        """
        x, lengths, unbatched, packed = self._prepare_input(input, lengths)
        steps, batch = x.shape[0], x.shape[1]
        h0 = self._initial_state(hx, batch, unbatched, x)
        if parallel is None:
            parallel = steps > 1

        # Rows of valid steps: (T, B, 1), True where step t < length.
        valid = None
        if lengths is not None:
            time = torch.arange(steps, device=x.device).view(steps, 1, 1)
            valid = time < lengths.to(x.device).view(1, batch, 1)

        layer_input = x
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                suffix = self._suffixes[index]
                weight = getattr(self, "weight_ih" + suffix)
                bias = getattr(self, "bias_ih" + suffix, None)
                output, final = self._run_direction(
                    F.linear(layer_input, weight, bias),
                    h0[index],
                    lengths,
                    direction == 1,
                    parallel,
                )
                if valid is not None:
                    output = output * valid
                outputs.append(output)
                finals.append(final)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        h_n = torch.stack(finals)
        return self._restore_output(layer_input, packed, unbatched), (
            h_n.squeeze(1) if unbatched else h_n
        )

    def _run_direction(
        self,
        x_proj: Tensor,
        h0: Tensor,
        lengths: Tensor | None,
        reverse: bool,
        parallel: bool,
    ) -> tuple[Tensor, Tensor]:
        """Run one layer and direction: x_proj (T, B, G*H), h0 (B, H).

        Returns the outputs (T, B, H) and each row's state after its last
        valid step (h0 for a row of length 0).
        """
        steps = x_proj.shape[0]
        if reverse:
            order = _reversal_index(steps, lengths, x_proj.device)
            x_proj = x_proj.gather(0, order.expand_as(x_proj))

        if parallel:
            log_a, log_b = self._log_coefficients(x_proj)
            output = log_space_scan(log_a, log_b, h0)
        else:
            h = h0
            states = []
            for t in range(steps):
                h = self._step(x_proj[t], h)
                states.append(h)
            output = torch.stack(states) if states else x_proj.new_empty(0, *h0.shape)

        # The final state is the one after each row's last valid step, which
        # is also the last step of the reversed rows.
        if lengths is None:
            final = output[-1] if steps else h0
        else:
            with_h0 = torch.cat([h0.unsqueeze(0), output])
            last = lengths.to(x_proj.device).view(1, -1, 1).expand(1, *h0.shape)
            final = with_h0.gather(0, last).squeeze(0)

        if reverse:
            output = output.gather(0, order.expand_as(output))
        return output, final

    # Input forms and checks.

    def _prepare_input(self, input, lengths):
        """Return (x (T, B, I), lengths (B,) or None, unbatched, packed input)."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(
                    "lengths= applies to padded input, but a PackedSequence was "
                    "given, which already carries its lengths"
                )
            self._check_features(input.data)
            x, packed_lengths = pad_packed_sequence(input)
            return x, packed_lengths, False, input
        if not isinstance(input, Tensor):
            raise TypeError(
                "expected input to be a Tensor or a PackedSequence, "
                f"got {type(input).__name__}"
            )
        if input.dim() not in (2, 3):
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(
                f"expected input of 3 dimensions {layout} or 2 dimensions (T, I) "
                f"unbatched, got shape {tuple(input.shape)}"
            )
        self._check_features(input)
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        if lengths is not None:
            lengths = sequence.check_lengths(lengths, x.shape[0], x.shape[1])
        return x, lengths, unbatched, None

    def _check_features(self, tensor: Tensor) -> None:
        if tensor.shape[-1] != self.input_size:
            raise ValueError(
                f"expected input with {self.input_size} features in its last "
                f"dimension (input_size={self.input_size}), got shape "
                f"{tuple(tensor.shape)}"
            )
        weight = self.weight_ih_l0
        if tensor.dtype != weight.dtype:
            raise TypeError(
                f"expected input of dtype {weight.dtype} to match the layer's "
                f"parameters, got {tensor.dtype}"
            )
        if tensor.device != weight.device:
            raise ValueError(
                f"expected input on device {weight.device}, where the layer's "
                f"parameters are, got {tensor.device}"
            )

    def _initial_state(self, hx, batch: int, unbatched: bool, x: Tensor) -> Tensor:
        """Return h0 as (L*D, B, H), zeros when ``hx`` is None."""
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            return x.new_zeros(shape)
        if not isinstance(hx, Tensor):
            raise TypeError(f"expected hx to be a Tensor, got {type(hx).__name__}")
        expected = (shape[0], shape[2]) if unbatched else shape
        if tuple(hx.shape) != expected:
            raise ValueError(
                f"expected hx of shape {expected} (L*D, B, H), got shape "
                f"{tuple(hx.shape)}"
            )
        if hx.dtype != x.dtype or hx.device != x.device:
            raise TypeError(
                f"expected hx of dtype {x.dtype} on {x.device} like the input, "
                f"got {hx.dtype} on {hx.device}"
            )
        return hx.unsqueeze(1) if unbatched else hx

    def _restore_output(self, output: Tensor, packed, unbatched: bool):
        """Return the output (T, B, D*H) in the caller's input form."""
        if packed is not None:
            rows = []
            order = packed.sorted_indices
            for t, size in enumerate(packed.batch_sizes.tolist()):
                selected = order[:size] if order is not None else slice(0, size)
                rows.append(output[t, selected])
            data = torch.cat(rows) if rows else output.new_empty(0, output.shape[-1])
            return PackedSequence(
                data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
            )
        if unbatched:
            return output.squeeze(1)
        if self.batch_first:
            return output.transpose(0, 1)
        return output


def _reversal_index(steps: int, lengths: Tensor | None, device) -> Tensor:
    """Return the (T, B, 1) index that reverses each row within its length.

    Step t of row b maps to step length_b - 1 - t, and padding stays in place.
    Applying the index twice gives back the original order.
    """
    time = torch.arange(steps, device=device).view(steps, 1, 1)
    if lengths is None:
        return (steps - 1 - time).view(steps, 1, 1)
    row_lengths = lengths.to(device).view(1, -1, 1)
    return torch.where(time < row_lengths, row_lengths - 1 - time, time)


class MinGRU(_MinimalBase):
    r"""A multi-layer minGRU: :math:`h_t = (1 - z_t) h_{t-1} + z_t g(W_h x_t + b_h)`.

    The update gate :math:`z_t = \sigma(W_z x_t + b_z)` depends on the input
    only (see ``min_gru_step``). Per layer and direction, ``weight_ih`` is
    (2*H, I) containing :math:`W_z` then :math:`W_h`, and ``bias_ih`` is (2*H,).
    Arguments and input forms follow ``torch.nn.GRU``, without ``hx`` for a
    cell state.

    >>> layer = MinGRU(input_size=1, hidden_size=2, batch_first=True)
    >>> output, h_n = layer(torch.tensor([[[0.1], [0.2], [0.3]]]))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((1, 3, 2), (1, 1, 2))
    """

    gates = 2
    _step = staticmethod(min_gru_step)
    _log_coefficients = staticmethod(min_gru_log_coefficients)


class MinLSTM(_MinimalBase):
    r"""A multi-layer minLSTM: :math:`h_t = f'_t h_{t-1} + i'_t g(W_h x_t + b_h)`.

    The normalised gates :math:`f'_t, i'_t` depend on the input only (see
    ``min_lstm_step``), and there is no separate cell state. Per layer and
    direction, ``weight_ih`` is (3*H, I) containing :math:`W_f, W_i, W_h`, and
    ``bias_ih`` is (3*H,). Arguments and input forms follow ``torch.nn.GRU``;
    h_n is a single tensor.

    >>> layer = MinLSTM(input_size=1, hidden_size=2, batch_first=True)
    >>> output, h_n = layer(torch.tensor([[[0.1], [0.2], [0.3]]]))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((1, 3, 2), (1, 1, 2))
    """

    gates = 3
    _step = staticmethod(min_lstm_step)
    _log_coefficients = staticmethod(min_lstm_log_coefficients)
