"""Show what every gate of a recurrent layer does at every step, as text or a plot.

``format_steps`` writes each step's computation with its numbers: each gate's
formula, its pre-activation and its value, then the new state.
``plot_trace`` draws the gates as heatmaps over time and the hidden-state
trajectory. ``checkpoint_window`` reads a window of the series that a
forecaster checkpoint was trained on, scaled as the model saw it.

Both renderings take a ``rnnkit.trace.Trace``; neither prints or writes to
the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnkit.layers import RecurrentBase
from rnnkit.trace import Trace

DIRECTION_NAMES = ("forward", "reverse")

# Gate letters of each mode in torch.nn's row order, which is also the order of
# the weight blocks in weight_ih and weight_hh.
GATE_LETTERS = {"LSTM": "ifgo", "GRU": "rzn", "RNN_TANH": "", "RNN_RELU": ""}

# Panel titles of the plot, which tests and docs refer to.
PANEL_TITLES = {
    "input": "input x",
    "pre_activation": "pre-activation a",
    "i": "input gate i",
    "f": "forget gate f",
    "g": "cell candidate g",
    "o": "output gate o",
    "c": "cell state c",
    "r": "reset gate r",
    "z": "update gate z",
    "n": "candidate state n",
    "h": "hidden state h",
    "trajectory": "hidden-state trajectory",
}


# Text.


def format_steps(
    result: Trace,
    *,
    row: int = 0,
    digits: int = 4,
    max_units: int | None = None,
    step_labels: list[str] | None = None,
) -> str:
    """Write the computation of every step of batch row ``row``, with its numbers.

    Every layer and direction is written in the order it runs: the reverse
    direction from the row's last step back to its first. ``max_units`` limits
    each vector to its first units, and ``step_labels`` adds a label (a date,
    say) to each time step. Steps past the row's length are left out.
    """
    _check_row(result, row)
    if digits < 0:
        raise ValueError(f"expected digits >= 0, got {digits}")
    if max_units is not None and max_units < 1:
        raise ValueError(f"expected max_units >= 1, got {max_units}")
    steps = result.inputs.shape[0]
    if step_labels is not None and len(step_labels) != steps:
        raise ValueError(
            f"expected one step label per time step ({steps}), got {len(step_labels)}"
        )

    def vector(values: Tensor) -> str:
        return format_vector(values, digits, max_units)

    length = int(result.valid[:, row].sum())
    directions = result.num_directions
    lines: list[str] = []
    for layer in range(len(result)):
        for direction in range(directions):
            lines.append(f"layer {layer}, {DIRECTION_NAMES[direction]} direction")
            order = range(length) if direction == 0 else range(length - 1, -1, -1)
            for t in order:
                label = f"  ({step_labels[t]})" if step_labels is not None else ""
                x = _step_input(result, layer, t, row)
                h_prev, c_prev = _previous_state(result, layer, direction, t, row)
                lines.append(f"t={t}{label}  x = {vector(x)}")
                state = f"  previous state   h = {vector(h_prev)}"
                if c_prev is not None:
                    state += f"   c = {vector(c_prev)}"
                lines.append(state)
                direction_steps = result[layer][direction]
                lines.extend(_step_lines(result.mode, direction_steps, t, row, vector))
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def format_vector(values: Tensor, digits: int = 4, max_units: int | None = None) -> str:
    """Write a 1-D tensor as ``[0.1234, -0.5678]``, cut to ``max_units`` values."""
    numbers = [f"{float(v):.{digits}f}" for v in values.reshape(-1)]
    if max_units is not None and len(numbers) > max_units:
        hidden = len(numbers) - max_units
        numbers = numbers[:max_units] + [f"... {hidden} more"]
    return "[" + ", ".join(numbers) + "]"


def format_weights(
    layer: RecurrentBase, digits: int = 4, max_units: int | None = None
) -> str:
    """Write every weight and bias of ``layer``, one gate block a line.

    Rows are units, so ``W_ii`` row k contains the input weights of unit k of the
    input gate. ``max_units`` limits the rows shown and each row's values.
    """
    letters = GATE_LETTERS[layer.mode] or "h"
    hidden = layer.hidden_size
    lines = []
    for index in range(layer.num_layers * layer.num_directions):
        number, direction = divmod(index, layer.num_directions)
        lines.append(
            f"weights of layer {number}, {DIRECTION_NAMES[direction]} direction"
        )
        w_ih, w_hh, b_ih, b_hh, w_hr = layer._direction_weights(index)
        for gate, letter in enumerate(letters):
            rows = slice(gate * hidden, (gate + 1) * hidden)
            suffix = letter if layer.mode in ("LSTM", "GRU") else "h"
            blocks = [
                (f"W_i{suffix}", w_ih[rows]),
                (f"b_i{suffix}", None if b_ih is None else b_ih[rows]),
                (f"W_h{suffix}", w_hh[rows]),
                (f"b_h{suffix}", None if b_hh is None else b_hh[rows]),
            ]
            parts = [
                f"{name} = {_format_matrix(value, digits, max_units)}"
                for name, value in blocks
                if value is not None
            ]
            lines.append("  " + "   ".join(parts))
        if w_hr is not None:
            lines.append(f"  W_hr = {_format_matrix(w_hr, digits, max_units)}")
    return "\n".join(lines) + "\n"


def _format_matrix(values: Tensor, digits: int, max_units: int | None) -> str:
    values = values.detach()
    if values.dim() == 1:
        return format_vector(values, digits, max_units)
    rows = [format_vector(r, digits, max_units) for r in values]
    if max_units is not None and len(rows) > max_units:
        rows = rows[:max_units] + [f"... {len(rows) - max_units} more rows"]
    return "[" + ", ".join(rows) + "]"


def _step_lines(mode, steps, t, row, vector) -> list[str]:
    """Write the gate lines of one step: formula, pre-activation and value."""
    pre = steps.pre_activation[t, row]
    if mode in ("RNN_TANH", "RNN_RELU"):
        activation = "tanh" if mode == "RNN_TANH" else "relu"
        rows = [
            ("a", "W_ih x + b_ih + W_hh h + b_hh", None, pre),
            ("h'", f"{activation}(a)", None, steps.h[t, row]),
        ]
        return _align(rows, vector)

    if mode == "LSTM":
        a_i, a_f, a_g, a_o = pre.chunk(4)
        projected = steps.h.shape[-1] != steps.c.shape[-1]
        new_h = "W_hr (o * tanh(c'))" if projected else "o * tanh(c')"
        rows = [
            ("i", "sigmoid(W_ii x + b_ii + W_hi h + b_hi)", a_i, steps.i[t, row]),
            ("f", "sigmoid(W_if x + b_if + W_hf h + b_hf)", a_f, steps.f[t, row]),
            ("g", "tanh(W_ig x + b_ig + W_hg h + b_hg)", a_g, steps.g[t, row]),
            ("o", "sigmoid(W_io x + b_io + W_ho h + b_ho)", a_o, steps.o[t, row]),
            ("c'", "f * c + i * g", None, steps.c[t, row]),
            ("h'", new_h, None, steps.h[t, row]),
        ]
        return _align(rows, vector)

    a_r, a_z, a_n = pre.chunk(3)
    rows = [
        ("r", "sigmoid(W_ir x + b_ir + W_hr h + b_hr)", a_r, steps.r[t, row]),
        ("z", "sigmoid(W_iz x + b_iz + W_hz h + b_hz)", a_z, steps.z[t, row]),
        ("n", "tanh(W_in x + b_in + r * (W_hn h + b_hn))", a_n, steps.n[t, row]),
        ("h'", "(1 - z) * n + z * h", None, steps.h[t, row]),
    ]
    return _align(rows, vector)


def _align(rows, vector) -> list[str]:
    """Write ``name = formula = activation(pre) = value`` lines, aligned at the =."""
    name_width = max(len(name) for name, *_ in rows)
    formula_width = max(len(formula) for _, formula, *_ in rows)
    lines = []
    for name, formula, pre, value in rows:
        text = f"  {name:<{name_width}} = {formula:<{formula_width}}"
        if pre is not None:
            activation = formula.split("(", 1)[0]
            text += f" = {activation}({vector(pre)})"
        lines.append(f"{text} = {vector(value)}")
    return lines


def _check_row(result: Trace, row: int) -> None:
    batch = result.inputs.shape[1]
    if not 0 <= row < batch:
        raise ValueError(f"expected a batch row in [0, {batch}), got {row}")


def _step_input(result: Trace, layer: int, t: int, row: int) -> Tensor:
    """Return the input of ``layer`` at step t: x, or the h of the layer below."""
    if layer == 0:
        return result.inputs[t, row]
    return torch.cat([steps.h[t, row] for steps in result[layer - 1]])


def _previous_state(
    result: Trace, layer: int, direction: int, t: int, row: int
) -> tuple[Tensor, Tensor | None]:
    """Return the (h, c) that step t of a layer and direction starts from."""
    steps = result[layer][direction]
    length = int(result.valid[:, row].sum())
    first = t == 0 if direction == 0 else t == length - 1
    if first:
        index = layer * result.num_directions + direction
        h = result.h0[index, row]
        c = result.c0[index, row] if result.c0 is not None else None
        return h, c
    previous = t - 1 if direction == 0 else t + 1
    c = steps.c[previous, row] if result.c0 is not None else None
    return steps.h[previous, row], c


# Plot.


def plot_trace(
    result: Trace,
    *,
    layer: int = -1,
    row: int = 0,
    title: str | None = None,
    step_labels: list[str] | None = None,
):
    """Draw the gates of one layer as heatmaps over time, and its h trajectory.

    The figure has one column per direction. Its rows of panels are the
    layer-0 input x, one heatmap per gate (time across, units down), the cell
    state c of an LSTM, the hidden state h, and the trajectory of every unit of
    h. Sigmoid gates share the colour scale [0, 1] and tanh values [-1, 1], so
    that saturation shows as the ends of the scale. Returns the matplotlib
    ``Figure``; save it with ``figure.savefig(path)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    _check_row(result, row)
    layers = len(result)
    if not -layers <= layer < layers:
        raise ValueError(f"expected a layer in [0, {layers}), got {layer}")
    layer = layer % layers
    if step_labels is not None and len(step_labels) != result.inputs.shape[0]:
        raise ValueError(
            f"expected one step label per time step ({result.inputs.shape[0]}), "
            f"got {len(step_labels)}"
        )

    length = int(result.valid[:, row].sum())
    panels = _panel_names(result)
    directions = result.num_directions
    size = (5.5 * directions + 1, 1.6 * len(panels) + 1)
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(len(panels), directions, squeeze=False, sharex=True)
    for direction in range(directions):
        steps = result[layer][direction]
        suffix = "" if directions == 1 else f" ({DIRECTION_NAMES[direction]})"
        for panel, ax in zip(panels, axes[:, direction], strict=True):
            ax.set_title(PANEL_TITLES[panel] + suffix, fontsize=9, loc="left")
            _draw_panel(figure, ax, panel, result, steps, row, length)
        bottom = axes[-1, direction]
        bottom.set_xlabel("time step")
        if step_labels is not None:
            _label_time_axis(bottom, step_labels[:length])
        else:
            bottom.xaxis.set_major_locator(MaxNLocator(integer=True))

    heading = title or f"{_describe_mode(result.mode)}, layer {layer}"
    figure.suptitle(heading, fontsize=10, wrap=True)
    return figure


def panel_titles(result: Trace) -> list[str]:
    """Return the panel titles of a one-direction ``plot_trace`` figure, top down."""
    return [PANEL_TITLES[name] for name in _panel_names(result)]


def _panel_names(result: Trace) -> list[str]:
    names = ["input"]
    if result.mode in ("LSTM", "GRU"):
        names += list(GATE_LETTERS[result.mode])
    else:
        names.append("pre_activation")
    if result.mode == "LSTM":
        names.append("c")
    return names + ["h", "trajectory"]


def _draw_panel(figure, ax, panel, result, steps, row, length) -> None:
    if panel == "input":
        values = result.inputs[:length, row].cpu().numpy()
        ax.plot(np.arange(length), values, marker=".", linewidth=1)
        return
    if panel == "trajectory":
        values = steps.h[:length, row].cpu().numpy()
        lines = ax.plot(np.arange(length), values, linewidth=1)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_ylabel("h")
        if len(lines) <= 8:
            labels = [f"unit {unit}" for unit in range(len(lines))]
            ax.legend(lines, labels, fontsize=7, ncols=4, loc="best")
        return

    values = getattr(steps, panel)[:length, row].cpu().numpy()  # (T, H)
    low, high, colours = _colour_scale(result.mode, panel, values)
    image = ax.imshow(
        values.T,
        aspect="auto",
        interpolation="nearest",
        origin="upper",
        cmap=colours,
        vmin=low,
        vmax=high,
    )
    ax.set_ylabel("unit")
    figure.colorbar(image, ax=ax, pad=0.01)


def _colour_scale(mode: str, panel: str, values: np.ndarray) -> tuple:
    """Return (vmin, vmax, colour map) for a heatmap panel."""
    if panel in ("i", "f", "o", "r", "z"):
        return 0.0, 1.0, "viridis"
    if panel in ("g", "n") or (panel == "h" and mode in ("GRU", "RNN_TANH")):
        return -1.0, 1.0, "RdBu_r"
    # c, an LSTM's h (tanh(c) times o, or a projection), pre-activations and a
    # ReLU h are unbounded: scale them to their largest magnitude.
    largest = float(np.nanmax(np.abs(values))) if values.size else 1.0
    largest = largest or 1.0
    if panel == "h" and mode == "RNN_RELU":
        return 0.0, largest, "viridis"
    return -largest, largest, "RdBu_r"


def _label_time_axis(ax, labels: list[str]) -> None:
    count = len(labels)
    stride = max(1, count // 8)
    ticks = list(range(0, count, stride))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[t] for t in ticks], rotation=30, ha="right")


def _describe_mode(mode: str) -> str:
    return {"RNN_TANH": "RNN (tanh)", "RNN_RELU": "RNN (ReLU)"}.get(mode, mode)


# A window of a checkpoint's own series.


@dataclass
class Window:
    """A context window of a forecaster's series, as raw values and scaled input."""

    inputs: Tensor  # (1, T, F) scaled with the checkpoint's scaler, float32
    values: np.ndarray  # (T, F) raw values
    labels: list[str]  # a date or row number per step
    columns: list[str]
    start: int  # row of the series where the window starts
    source: str


def checkpoint_window(metadata: dict, start: int | None = None) -> Window:
    """Read the window of ``context`` rows at ``start`` of a checkpoint's series.

    ``metadata`` is the checkpoint dict from
    ``rnnkit.tasks.forecast.load_checkpoint``. The series is read again with the
    columns, date column and fill method recorded at training time and scaled
    with the recorded scaler. ``start`` defaults to the last full window, the
    one a forecast past the end of the series starts from. Raises ``ValueError``
    when the series cannot be read or ``start`` leaves no full window.
    """
    from rnnkit.tasks.forecast.data import BUILTIN_SOURCE, load_series
    from rnnkit.tasks.forecast.windows import Scaler

    recorded = metadata["data"]
    source = recorded["source"]
    try:
        series = load_series(
            None if source == BUILTIN_SOURCE else source,
            columns=recorded["columns"],
            date_column=recorded["date_column"],
            fill=recorded["fill"],
            season=recorded["season"],
        )
    except ValueError as error:
        raise ValueError(
            f"cannot read the series the checkpoint was trained on: {error}"
        ) from None

    context = int(recorded["context"])
    last_start = len(series) - context
    if last_start < 0:
        raise ValueError(
            f"series too short: the model reads a context of {context} rows, but "
            f"{source} has {len(series)}"
        )
    if start is None:
        start = last_start
    if not 0 <= start <= last_start:
        raise ValueError(
            f"invalid window start {start}: a window of {context} rows of {source} "
            f"({len(series)} rows) starts at a row from 0 to {last_start}"
        )

    values = series.values[start : start + context]
    scaler = Scaler.from_dict(metadata["scaler"])
    scaled = torch.from_numpy(scaler.transform(values).astype(np.float32))[None]
    if series.dates is not None:
        labels = [str(d.date()) for d in series.dates[start : start + context]]
    else:
        labels = [f"row {r}" for r in range(start, start + context)]
    return Window(
        inputs=scaled,
        values=values,
        labels=labels,
        columns=list(series.columns),
        start=start,
        source=source,
    )


def save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` as PNG. Raises ``ValueError`` for another suffix."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"expected a plot file name ending in .png, got {str(path)!r}")
    figure.savefig(path, dpi=100, format="png")
    return path
