"""Record every gate of a recurrent layer at every time step.

``trace(layer, x)`` runs an rnnkit ``RNN``, ``LSTM`` or ``GRU`` layer and
returns, for each layer and direction, the gate activations and states of every
step as (T, B, *) tensors. ``trace(model, x)`` runs a model built on such
layers and returns one trace per layer call, keyed by the submodule's name.

Each layer and direction runs through ``rnnkit.kernels.run_direction``, the
same call with the same arguments that the layer's own forward makes, so the
reported h is bit for bit the layer's output whichever backend runs it. The
gates are then recomputed from the previous step's h with the equations of
``rnnkit.cells``.

Shapes: T time, B batch, I input features, H hidden, P projection (LSTM),
L layers, D directions, G gates. All traced tensors are time-major and in the
caller's batch order, whatever the input form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import kernels, sequence
from rnnkit.layers import RecurrentBase


class RNNSteps(NamedTuple):
    """The steps of one Elman RNN layer and direction.

    ``h_t = act(a_t)`` with ``a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` and act
    tanh or ReLU.
    """

    pre_activation: Tensor  # a: (T, B, H)
    h: Tensor  # (T, B, H)

    gate_names = ("pre_activation",)


class LSTMSteps(NamedTuple):
    """The steps of one LSTM layer and direction, gates as in ``cells.lstm_step``."""

    i: Tensor  # input gate (T, B, H)
    f: Tensor  # forget gate (T, B, H)
    g: Tensor  # cell candidate (T, B, H)
    o: Tensor  # output gate (T, B, H)
    c: Tensor  # cell state (T, B, H)
    h: Tensor  # hidden state (T, B, H), or (T, B, P) with a projection
    pre_activation: Tensor  # i, f, g, o before their activation: (T, B, 4*H)

    gate_names = ("i", "f", "g", "o")


class GRUSteps(NamedTuple):
    """The steps of one GRU layer and direction, gates as in ``cells.gru_step``."""

    r: Tensor  # reset gate (T, B, H)
    z: Tensor  # update gate (T, B, H)
    n: Tensor  # candidate state (T, B, H)
    h: Tensor  # hidden state (T, B, H)
    # r, z, n before their activation: (T, B, 3*H). The n part is
    # W_in x + b_in + r * (W_hn h + b_hn).
    pre_activation: Tensor

    gate_names = ("r", "z", "n")


Steps = RNNSteps | LSTMSteps | GRUSteps


@dataclass(frozen=True)
class Trace:
    """The traced steps of one call of a recurrent layer, indexed [layer][direction].

    ``h`` of each layer and direction is the layer's output for that direction:
    zero past a row's length, as in the layer's output. Every other field is
    NaN past a row's length, because no step ran there. ``valid`` marks the
    steps that ran. Direction 1 is the reverse direction of a bidirectional
    layer; its step t is still the input's time step t.
    """

    mode: str  # "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"
    layers: list[list[Steps]]
    inputs: Tensor  # layer 0 input (T, B, I), zero past a row's length
    h0: Tensor  # initial hidden state (L*D, B, H or P)
    c0: Tensor | None  # initial cell state (L*D, B, H) of an LSTM, else None
    valid: Tensor  # (T, B) bool: True where a row's step ran

    def __getitem__(self, layer: int) -> list[Steps]:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_directions(self) -> int:
        return len(self.layers[0])


def trace(
    module: nn.Module, input, hx=None, *, lengths=None, **model_kwargs
) -> Trace | dict[str, Trace]:
    """Run ``module`` on ``input`` and record its gates at every step.

    For an rnnkit ``RNN``, ``LSTM`` or ``GRU``, ``input``, ``hx`` and
    ``lengths`` are those of the layer's forward, and the result is a ``Trace``.
    For any other module, the call is ``module(input, **model_kwargs)`` (with
    ``hx`` and ``lengths`` passed on when given), and the result maps the name of
    each rnnkit layer submodule to the trace of its call. A layer called more
    than once gets the keys ``name``, ``name#1``, ``name#2`` and so on, in call
    order.

    Raises ``TypeError`` when ``module`` is not an ``nn.Module`` and
    ``ValueError`` when a model has no rnnkit layer or the module's forward
    did not call any.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"expected an rnnkit layer or a torch.nn.Module built on rnnkit layers, "
            f"got {type(module).__name__}"
        )
    if isinstance(module, RecurrentBase):
        if model_kwargs:
            raise TypeError(
                "extra keyword arguments apply to models only, but an rnnkit layer "
                f"was given with {sorted(model_kwargs)}"
            )
        return trace_layer(module, input, hx, lengths=lengths)

    if hx is not None:
        model_kwargs["hx"] = hx
    if lengths is not None:
        model_kwargs["lengths"] = lengths
    return _trace_model(module, input, model_kwargs)


def trace_layer(layer: RecurrentBase, input, hx=None, *, lengths=None) -> Trace:
    """Run one rnnkit layer on ``input`` and record its gates at every step.

    Arguments are those of the layer's forward. Raises ``ValueError`` for a
    layer in training mode with inter-layer dropout, whose random masks a trace
    cannot reproduce, and the layer's own errors for invalid input.
    """
    if layer.training and layer.dropout > 0 and layer.num_layers > 1:
        raise ValueError(
            f"cannot trace a layer in training mode with dropout={layer.dropout} "
            "between its layers, because the random dropout masks would differ "
            "from those of any forward call; call .eval() on the layer first"
        )
    layout, initial, inputs = _prepare(layer, input, hx, lengths)
    sorted_initial = tuple(layout.to_sorted(s) for s in initial)

    layer_input = layout.data
    layers: list[list[Steps]] = []
    for index in range(layer.num_layers):
        outputs = []
        directions = []
        for direction in range(layer.num_directions):
            flat = index * layer.num_directions + direction
            weights = layer._direction_weights(flat)
            state = tuple(s[flat] for s in sorted_initial)
            output, _ = kernels.run_direction(
                layer.mode,
                layer_input,
                layout.batch_sizes,
                state,
                weights,
                reverse=direction == 1,
            )
            with torch.no_grad():
                packed = _trace_direction(
                    layer.mode, layer_input, output, layout.batch_sizes, state,
                    weights, reverse=direction == 1,
                )  # fmt: skip
            directions.append(_to_time_major(packed, layout, layer.mode))
            outputs.append(output)
        layers.append(directions)
        layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]

    return Trace(
        mode=layer.mode,
        layers=layers,
        inputs=inputs.detach(),
        h0=initial[0].detach(),
        c0=initial[1].detach() if layer.mode == "LSTM" else None,
        valid=_valid_mask(layout),
    )


# Preparing the input as the layer's forward does.


def _prepare(
    layer: RecurrentBase, input, hx, lengths
) -> tuple[sequence.Layout, tuple[Tensor, ...], Tensor]:
    """Return the packed layout, the initial state (L*D, B, *) in caller order,
    and the input as (T, B, I), zero past each row's length.
    """
    layout, initial, unbatched = layer._prepare_input(input, hx, lengths)
    if isinstance(input, PackedSequence):
        inputs = torch.nn.utils.rnn.pad_packed_sequence(input)[0]
    else:
        if unbatched:
            x = input.unsqueeze(1)
        elif layer.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        inputs = x * _valid_mask(layout).unsqueeze(-1).to(x.dtype)
    return layout, initial, inputs


# Recomputing the gates of one direction.


def _trace_direction(
    mode: str,
    data: Tensor,
    output: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
) -> dict[str, Tensor]:
    """Return every traced field as packed rows (N, *), in the layout of ``data``.

    The previous h of each step is the one in ``output``, so the gates explain
    exactly the h that the layer produced. A row that starts later in the
    reverse direction starts from its initial state, as in the kernels.
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    x_proj = F.linear(data, w_ih, b_ih)
    offsets = [0]
    for size in batch_sizes:
        offsets.append(offsets[-1] + size)

    h_state = state[0]
    c_state = state[1] if mode == "LSTM" else None
    fields: dict[str, list[Tensor | None]] = {}
    steps = range(len(batch_sizes))
    for t in reversed(steps) if reverse else steps:
        size = batch_sizes[t]
        rows = slice(offsets[t], offsets[t + 1])
        h_prev = h_state[:size]
        c_prev = c_state[:size] if c_state is not None else None
        step = _step_gates(mode, x_proj[rows], h_prev, c_prev, w_hh, b_hh)
        step["h"] = output[rows]
        for name, value in step.items():
            fields.setdefault(name, [None] * len(batch_sizes))[t] = value

        h_state = torch.cat((output[rows], h_state[size:]))
        # NOTE: the kernels return no per-step c, so c is the recomputed one.
        # It can differ from a fused kernel's internal c by float rounding.
        if c_state is not None:
            c_state = torch.cat((step["c"], c_state[size:]))

    if not fields:
        # No row has a step, as when every length is 0: every field is empty.
        c_empty = state[1][:0] if mode == "LSTM" else None
        empty = _step_gates(mode, x_proj[:0], state[0][:0], c_empty, w_hh, b_hh)
        empty["h"] = output[:0]
        return {name: value.detach() for name, value in empty.items()}
    return {name: torch.cat(values).detach() for name, values in fields.items()}


def _step_gates(
    mode: str,
    x_proj: Tensor,
    h: Tensor,
    c: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
) -> dict[str, Tensor]:
    """Return the gates of one step (B, *) with the equations of ``rnnkit.cells``."""
    if mode == "LSTM":
        pre = x_proj + F.linear(h, w_hh, b_hh)
        a_i, a_f, a_g, a_o = pre.chunk(4, dim=-1)
        i = torch.sigmoid(a_i)
        f = torch.sigmoid(a_f)
        g = torch.tanh(a_g)
        o = torch.sigmoid(a_o)
        c_next = f * c + i * g
        return {"i": i, "f": f, "g": g, "o": o, "c": c_next, "pre_activation": pre}

    if mode == "GRU":
        x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        a_n = x_n + r * h_n
        n = torch.tanh(a_n)
        pre = torch.cat((x_r + h_r, x_z + h_z, a_n), dim=-1)
        return {"r": r, "z": z, "n": n, "pre_activation": pre}

    return {"pre_activation": x_proj + F.linear(h, w_hh, b_hh)}


# Laying the packed rows out in time.


def _to_time_major(packed: dict[str, Tensor], layout: sequence.Layout, mode: str):
    """Scatter packed fields (N, F) to (T, B, F) in caller order.

    h is padded with 0 like the layer's output, every other field with NaN.
    """
    caller_rows = layout.sorted_indices
    if caller_rows is None:
        caller_rows = torch.arange(layout.batch)
    caller_rows = caller_rows.to("cpu")

    def scatter(rows: Tensor, fill: float) -> Tensor:
        padded = rows.new_full((layout.steps, layout.batch, rows.shape[-1]), fill)
        start = 0
        for t, size in enumerate(layout.batch_sizes):
            padded[t, caller_rows[:size]] = rows[start : start + size]
            start += size
        return padded

    kind = {"LSTM": LSTMSteps, "GRU": GRUSteps}.get(mode, RNNSteps)
    return kind(
        **{
            name: scatter(rows, 0.0 if name == "h" else float("nan"))
            for name, rows in packed.items()
        }
    )


def _valid_mask(layout: sequence.Layout) -> Tensor:
    """Return (T, B) bool, True where row b has a step t, in caller order."""
    valid = torch.zeros(layout.steps, layout.batch, dtype=torch.bool)
    caller_rows = layout.sorted_indices
    if caller_rows is None:
        caller_rows = torch.arange(layout.batch)
    for t, size in enumerate(layout.batch_sizes):
        valid[t, caller_rows[:size].to("cpu")] = True
    return valid.to(layout.data.device)


# Tracing the rnnkit layers inside a model.


def _trace_model(model: nn.Module, input, kwargs: dict) -> dict[str, Trace]:
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, RecurrentBase)
    }
    if not layers:
        raise ValueError(
            f"expected a model containing rnnkit RNN, LSTM or GRU layers, but "
            f"{type(model).__name__} has none; torch.nn recurrent layers can be "
            "converted with rnnkit.from_torch"
        )

    calls: list[tuple[str, RecurrentBase, tuple, dict]] = []

    def record(name: str):
        def hook(module, args, hook_kwargs):
            calls.append((name, module, args, dict(hook_kwargs)))

        return hook

    handles = [
        module.register_forward_pre_hook(record(name), with_kwargs=True)
        for name, module in layers.items()
    ]
    try:
        model(input, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    if not calls:
        raise ValueError(
            f"{type(model).__name__}'s forward did not call any of its rnnkit "
            f"layers ({', '.join(layers)}), so there is nothing to trace"
        )
    traces: dict[str, Trace] = {}
    seen: dict[str, int] = {}
    for name, module, args, call_kwargs in calls:
        count = seen.get(name, 0)
        seen[name] = count + 1
        key = name if count == 0 else f"{name}#{count}"
        layer_input = args[0] if args else call_kwargs.pop("input")
        layer_hx = args[1] if len(args) > 1 else call_kwargs.pop("hx", None)
        traces[key] = trace_layer(
            module, layer_input, layer_hx, lengths=call_kwargs.get("lengths")
        )
    return traces
