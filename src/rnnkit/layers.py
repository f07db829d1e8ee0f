"""RNN, LSTM and GRU layers and cells, interchangeable with ``torch.nn``'s.

Constructor arguments and defaults, parameter names and shapes, initialisation,
input forms and return values are those of ``torch.nn``, so a state dict moves
between the two with ``strict=True``. The arithmetic is rnnkit's own: the step
equations of ``rnnkit.cells``, run over the sequence by ``rnnkit.kernels``.

Shapes: T time, B batch, I input features, H hidden, P projection (LSTM),
L layers, D directions (1, or 2 when bidirectional), G gates.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import cells, kernels, regularize, sequence

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class RecurrentBase(nn.Module):
    """The multi-layer recurrent layer shared by ``RNN``, ``LSTM`` and ``GRU``."""

    def __init__(
        self,
        mode: str,
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
        super().__init__()
        _check_constructor_args(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size,
        )  # fmt: skip
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, "
                "so non-zero dropout expects num_layers greater than 1, but got "
                f"dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.recurrent_dropout = regularize.check_probability(
            "recurrent_dropout", recurrent_dropout
        )
        self.zoneout = regularize.check_probability("zoneout", zoneout)
        self.weight_dropout = regularize.check_probability(
            "weight_dropout", weight_dropout
        )

        # Parameters are created in torch.nn's order, so that the same seed
        # draws the same initial weights.
        factory = {"device": device, "dtype": dtype}
        gate_size = GATES[mode] * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input_size = (
                    input_size if layer == 0 else real_hidden_size * self.num_directions
                )
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {
                    "weight_ih": (gate_size, layer_input_size),
                    "weight_hh": (gate_size, real_hidden_size),
                }
                if bias:
                    shapes["bias_ih"] = (gate_size,)
                    shapes["bias_hh"] = (gate_size,)
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = []
                for kind, shape in shapes.items():
                    setattr(
                        self, kind + suffix, nn.Parameter(torch.empty(shape, **factory))
                    )
                    names.append(kind + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer and direction, in ``torch.nn``'s order."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Do nothing: rnnkit keeps no flat weight buffer. Present for compatibility."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            text += f", proj_size={self.proj_size}"
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
        for name in ("recurrent_dropout", "zoneout", "weight_dropout"):
            if getattr(self, name) != 0:
                text += f", {name}={getattr(self, name)}"
        return text

    def to_torch(self) -> nn.Module:
        """Return the equivalent ``torch.nn`` layer holding copies of these weights."""
        from rnnkit.convert import to_torch

        return to_torch(self)

    # Forward pass.

    def forward(self, input, hx=None, *, lengths=None, generator=None):
        """Run the layer over a sequence batch.

        ``input`` is (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched,
        or a ``PackedSequence``. ``hx`` is h0 (L*D, B, H_out), or (h0, c0) for the
        LSTM, with c0 (L*D, B, H); unbatched, both lose their B axis.
        ``lengths`` (keyword-only, padded input only) gives each row's number of
        valid steps. Outputs past it are zero, and the final state is that of the
        row's last valid step, as with a ``PackedSequence``. A length of 0 leaves
        the row's state at h0.
        ``generator`` (keyword-only) draws the masks of ``recurrent_dropout``,
        ``zoneout`` and ``weight_dropout`` in training, in the order given in
        ``rnnkit.regularize``. Without it, they come from the global RNG. The
        ``dropout`` between layers always uses the global RNG, as in ``torch.nn``.

        Returns ``(output, h_n)``, or ``(output, (h_n, c_n))`` for the LSTM.
        """
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                "expected generator to be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        layout, initial, unbatched = self._prepare_input(input, hx, lengths)
        initial = tuple(layout.to_sorted(s) for s in initial)
        output, final = self._run_layers(layout, initial, generator)

        output = layout.restore(output)
        if not isinstance(output, PackedSequence):
            if unbatched:
                output = output.squeeze(1)
            elif self.batch_first:
                output = output.transpose(0, 1)
        final = tuple(layout.to_caller(s) for s in final)
        if unbatched:
            final = tuple(s.squeeze(1) for s in final)
        if self.mode == "LSTM":
            return output, final
        return output, final[0]

    def _prepare_input(
        self, input, hx, lengths
    ) -> tuple[sequence.Layout, tuple[Tensor, ...], bool]:
        """Check the input and state, and lay the input out as packed rows.

        Returns the layout, the initial state as (L*D, B, *) tensors in the
        caller's row order, and whether the input was unbatched.
        """
        unbatched = False
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(
                    "lengths= applies to padded input, but a PackedSequence was "
                    "given, which already carries its lengths"
                )
            self._check_tensor("input", input.data, 2)
            layout = sequence.from_packed(input)
            reference = input.data
        else:
            if not isinstance(input, Tensor):
                raise TypeError(
                    "expected input to be a Tensor or a PackedSequence, "
                    f"got {type(input).__name__}"
                )
            self._check_input(input)
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
            elif self.batch_first:
                x = input.transpose(0, 1)
            else:
                x = input
            if lengths is None:
                layout = sequence.from_padded(x)
            else:
                layout = sequence.from_lengths(x, lengths)
            reference = input

        initial = self._initial_state(hx, layout.batch, unbatched, reference)
        return layout, initial, unbatched

    def _run_layers(
        self,
        layout: sequence.Layout,
        initial: tuple[Tensor, ...],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        layer_input = layout.data
        if self.num_layers == 1 and not self.bidirectional:
            # The common case without the per-layer lists, which are a
            # noticeable share of a short sequence's time.
            output, final = self._run_direction(
                0,
                layer_input,
                layout.batch_sizes,
                tuple(s[0] for s in initial),
                False,
                generator,
            )
            return output, tuple(state.unsqueeze(0) for state in final)
        finals: list[list[Tensor]] = [[] for _ in initial]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                output, final = self._run_direction(
                    index,
                    layer_input,
                    layout.batch_sizes,
                    tuple(s[index] for s in initial),
                    direction == 1,
                    generator,
                )
                outputs.append(output)
                for collected, state in zip(finals, final, strict=True):
                    collected.append(state)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(torch.stack(states) for states in finals)

    def _run_direction(
        self,
        index: int,
        data: Tensor,
        batch_sizes: list[int],
        state: tuple[Tensor, ...],
        reverse: bool,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run layer and direction ``index``, with the regularisers in training."""
        weights = self._direction_weights(index)
        regularized = self.recurrent_dropout or self.zoneout or self.weight_dropout
        if not (self.training and regularized):
            return kernels.run_direction(
                self.mode, data, batch_sizes, state, weights, reverse
            )
        return regularize.run_direction(
            self.mode,
            data,
            batch_sizes,
            state,
            weights,
            reverse,
            recurrent_dropout=self.recurrent_dropout,
            zoneout=self.zoneout,
            weight_dropout=self.weight_dropout,
            generator=generator,
        )

    def _direction_weights(self, index: int) -> tuple[Tensor | None, ...]:
        """Return (w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction."""
        names = self._weight_names(index)
        # A parameter is read from _parameters directly, which is what the
        # attribute lookup does, at a fraction of its cost. Names found
        # elsewhere (a parametrization, or a plain tensor set in its place)
        # take the attribute lookup.
        parameters = self._parameters
        weights = []
        for name in names:
            if name is None:
                weights.append(None)
            elif name in parameters:
                weights.append(parameters[name])
            else:
                weights.append(getattr(self, name, None))
        return tuple(weights)

    def _weight_names(self, index: int) -> tuple[str | None, ...]:
        """Return the names of one direction's (w_ih, w_hh, b_ih, b_hh, w_hr).

        A weight the layer does not have is None. The names are cached per
        instance, because they never change after construction.
        """
        cache = self.__dict__.get("_weight_names_cache")
        if cache is None:
            cache = {}
            self.__dict__["_weight_names_cache"] = cache
        names = cache.get(index)
        if names is None:
            present = self._all_weights[index]
            suffix = present[0][len("weight_ih") :]
            kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            names = tuple(
                kind + suffix if kind + suffix in present else None for kind in kinds
            )
            cache[index] = names
        return names

    # Input checks.

    def _check_input(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(
                f"expected input of 3 dimensions {layout} or 2 dimensions (T, I) "
                f"unbatched, got {input.dim()} dimensions with shape "
                f"{tuple(input.shape)}"
            )
        self._check_tensor("input", input, input.dim())

    def _check_tensor(self, name: str, tensor: Tensor, dims: int) -> None:
        if tensor.shape[-1] != self.input_size:
            raise ValueError(
                f"expected {name} with {self.input_size} features in its last "
                f"dimension (input_size={self.input_size}), got shape "
                f"{tuple(tensor.shape)}"
            )
        weight = self.weight_ih_l0
        if tensor.dtype != weight.dtype:
            # Only a floating-point dtype is a valid dtype for the layer too.
            layer_fix = (
                f" or the layer with .to({tensor.dtype})"
                if tensor.dtype.is_floating_point
                else ""
            )
            raise TypeError(
                f"expected {name} of dtype {weight.dtype} to match the layer's "
                f"parameters, got {tensor.dtype}; convert the input with "
                f".to({weight.dtype}){layer_fix}"
            )
        if tensor.device != weight.device:
            raise ValueError(
                f"expected {name} on device {weight.device}, where the layer's "
                f"parameters are, got {tensor.device}"
            )

    def _initial_state(
        self, hx, batch: int, unbatched: bool, reference: Tensor
    ) -> tuple[Tensor, ...]:
        """Return the checked initial state as a tuple of (L*D, B, *) tensors."""
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        layers = self.num_layers * self.num_directions
        expected = {"h0": (layers, batch, out_size)}
        if self.mode == "LSTM":
            expected["c0"] = (layers, batch, self.hidden_size)

        if hx is None:
            return tuple(
                reference.new_zeros(shape, dtype=reference.dtype)
                for shape in expected.values()
            )
        if self.mode == "LSTM":
            if not (isinstance(hx, tuple | list) and len(hx) == 2):
                raise TypeError(
                    "expected hx=(h0, c0), a pair of tensors, for an LSTM, "
                    f"got {type(hx).__name__}"
                )
            given = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"expected hx to be a Tensor, got {type(hx).__name__}")
            given = (hx,)

        states = []
        for (name, shape), state in zip(expected.items(), given, strict=True):
            if not isinstance(state, Tensor):
                raise TypeError(f"expected {name} to be a Tensor, got {type(state)}")
            if unbatched:
                if state.dim() != 2:
                    raise ValueError(
                        f"expected {name} of shape {(shape[0], shape[2])} for "
                        f"unbatched input, got shape {tuple(state.shape)}"
                    )
                state = state.unsqueeze(1)
            if tuple(state.shape) != shape:
                raise ValueError(
                    f"expected {name} of shape {shape} (L*D, B, H), got shape "
                    f"{tuple(state.shape)}"
                )
            if state.dtype != reference.dtype:
                raise TypeError(
                    f"expected {name} of dtype {reference.dtype} like the input, "
                    f"got {state.dtype}"
                )
            if state.device != reference.device:
                raise ValueError(
                    f"expected {name} on device {reference.device} like the input, "
                    f"got {state.device}"
                )
            states.append(state)
        return tuple(states)


class RNN(RecurrentBase):
    r"""A multi-layer Elman RNN: :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    With ``nonlinearity='relu'``, ReLU replaces tanh. Arguments, parameters and
    results are those of ``torch.nn.RNN``; see ``RecurrentBase.forward``.

    >>> layer = RNN(input_size=1, hidden_size=2, batch_first=True)
    >>> output, h_n = layer(torch.tensor([[[0.1], [0.2], [0.3]]]))
    >>> tuple(output.shape), tuple(h_n.shape)
    ((1, 3, 2), (1, 1, 2))
    """  # noqa: E501

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
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
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(
                f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        super().__init__(
            modes[nonlinearity], input_size, hidden_size, num_layers, bias,
            batch_first, dropout, bidirectional, 0, device, dtype,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_dropout=weight_dropout,
        )  # fmt: skip


class LSTM(RecurrentBase):
    r"""A multi-layer LSTM, with an optional projection of h (``proj_size``).

    Gates i, f, g, o as in ``rnnkit.cells.lstm_step``. Arguments, parameters and
    results are those of ``torch.nn.LSTM``; see ``RecurrentBase.forward``.

    >>> layer = LSTM(input_size=1, hidden_size=2, batch_first=True)
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
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first,
            dropout, bidirectional, proj_size, device, dtype,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_dropout=weight_dropout,
        )  # fmt: skip


class GRU(RecurrentBase):
    r"""A multi-layer GRU.

    Gates r, z, n as in ``rnnkit.cells.gru_step``. Arguments, parameters and
    results are those of ``torch.nn.GRU``; see ``RecurrentBase.forward``.

    >>> layer = GRU(input_size=1, hidden_size=2, batch_first=True)
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
            "GRU", input_size, hidden_size, num_layers, bias, batch_first,
            dropout, bidirectional, 0, device, dtype,
            recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_dropout=weight_dropout,
        )  # fmt: skip


def _check_constructor_args(
    mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
    bidirectional, proj_size,
) -> None:  # fmt: skip
    flags = {"bias": bias, "batch_first": batch_first, "bidirectional": bidirectional}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"expected {name} of type bool, got {type(value).__name__}")
    sizes = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "proj_size": proj_size,
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected {name} of type int, got {type(value).__name__}")
    for name in ("input_size", "hidden_size", "num_layers"):
        value = sizes[name]
        if value <= 0:
            raise ValueError(f"expected {name} greater than zero, got {value}")
    if (
        not isinstance(dropout, numbers.Real)
        or isinstance(dropout, bool)
        or not 0 <= dropout <= 1
    ):
        raise ValueError(
            "expected dropout to be a probability in [0, 1] of zeroing an element, "
            f"got {dropout!r}"
        )
    if proj_size < 0:
        raise ValueError(
            f"expected proj_size >= 0 (0 disables the projection), got {proj_size}"
        )
    if proj_size > 0 and mode != "LSTM":
        raise ValueError("proj_size is supported only by LSTM, not by RNN or GRU")
    if proj_size >= hidden_size and proj_size > 0:
        raise ValueError(
            f"expected proj_size smaller than hidden_size={hidden_size}, "
            f"got {proj_size}"
        )


# Single-step cells.


class CellBase(nn.Module):
    """The single-step cell shared by ``RNNCell``, ``LSTMCell`` and ``GRUCell``."""

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool, gates: int, device, dtype
    ) -> None:
        super().__init__()
        _check_constructor_args(
            "CELL", input_size, hidden_size, 1, bias, False, 0.0, False, 0
        )
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(
            torch.empty(gates * hidden_size, input_size, **factory)
        )
        self.weight_hh = nn.Parameter(
            torch.empty(gates * hidden_size, hidden_size, **factory)
        )
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), as ``torch.nn`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        if nonlinearity != "tanh":
            text += f", nonlinearity={nonlinearity}"
        return text

    def to_torch(self) -> nn.Module:
        """Return the equivalent ``torch.nn`` cell holding copies of these weights."""
        from rnnkit.convert import to_torch

        return to_torch(self)

    def _prepare(self, input: Tensor, hx, count: int) -> tuple[Tensor, tuple, bool]:
        """Check a step's input and state, and return them batched (B, *)."""
        if not isinstance(input, Tensor):
            raise TypeError(
                f"expected input to be a Tensor, got {type(input).__name__}"
            )
        if input.dim() not in (1, 2):
            raise ValueError(
                f"expected input of 2 dimensions (B, {self.input_size}) or 1 "
                f"dimension ({self.input_size},), got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"expected input with {self.input_size} features in its last "
                f"dimension (input_size={self.input_size}), got shape "
                f"{tuple(input.shape)}"
            )
        if input.dtype != self.weight_ih.dtype:
            raise TypeError(
                f"expected input of dtype {self.weight_ih.dtype} to match the cell's "
                f"parameters, got {input.dtype}"
            )
        if input.device != self.weight_ih.device:
            raise ValueError(
                f"expected input on device {self.weight_ih.device}, where the cell's "
                f"parameters are, got {input.device}"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        shape = (x.shape[0], self.hidden_size)

        if hx is None:
            return x, tuple(x.new_zeros(shape) for _ in range(count)), unbatched
        given = (hx,) if count == 1 else tuple(hx)
        states = []
        for state in given:
            if not isinstance(state, Tensor):
                raise TypeError(f"expected hx to hold Tensors, got {type(state)}")
            state = state.unsqueeze(0) if unbatched and state.dim() == 1 else state
            if tuple(state.shape) != shape:
                expected = (self.hidden_size,) if unbatched else shape
                raise ValueError(
                    f"expected hx of shape {expected}, got {tuple(state.shape)}"
                )
            if state.dtype != x.dtype or state.device != x.device:
                raise TypeError(
                    f"expected hx of dtype {x.dtype} on {x.device} like the input, "
                    f"got {state.dtype} on {state.device}"
                )
            states.append(state)
        return x, tuple(states), unbatched


class RNNCell(CellBase):
    r"""An Elman RNN cell: :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})`.

    Arguments, parameters and results are those of ``torch.nn.RNNCell``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}"
            )
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), unbatched = self._prepare(input, hx, 1)
        x_proj = F.linear(x, self.weight_ih, self.bias_ih)
        step = (
            cells.rnn_tanh_step if self.nonlinearity == "tanh" else cells.rnn_relu_step
        )
        h = step(x_proj, h, self.weight_hh, self.bias_hh)
        return h.squeeze(0) if unbatched else h


class LSTMCell(CellBase):
    """An LSTM cell, gates i, f, g, o as in ``rnnkit.cells.lstm_step``.

    Arguments, parameters and results are those of ``torch.nn.LSTMCell``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx=None) -> tuple[Tensor, Tensor]:
        x, (h, c), unbatched = self._prepare(input, hx, 2)
        x_proj = F.linear(x, self.weight_ih, self.bias_ih)
        h, c = cells.lstm_step(x_proj, h, c, self.weight_hh, self.bias_hh)
        if unbatched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(CellBase):
    """A GRU cell, gates r, z, n as in ``rnnkit.cells.gru_step``.

    Arguments, parameters and results are those of ``torch.nn.GRUCell``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), unbatched = self._prepare(input, hx, 1)
        x_proj = F.linear(x, self.weight_ih, self.bias_ih)
        h = cells.gru_step(x_proj, h, self.weight_hh, self.bias_hh)
        return h.squeeze(0) if unbatched else h
