"""The explain text and plot, and the ``rnnkit explain`` command.

Printed numbers are parsed back and compared with gate values written out from
a ``torch.nn`` layer's weights (``expected_steps`` in test_trace.py). The
checkpoint case trains a tiny forecaster on the airline passengers series with
``rnnkit train`` and rebuilds its window from the CSV file and the scaler
stored in the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import explain
from rnnkit.cli import main
from test_trace import expected_steps

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AIRLINE = DATA / "airline-passengers.csv"
VECTOR = re.compile(r"\[([^\[\]]*)\]")


def parse_vector(text: str) -> list[float]:
    return [float(item) for item in text.split(", ")]


def parse_steps(text: str) -> dict:
    """Parse format_steps output into {(layer, direction, t): step dict}."""
    steps = {}
    position = None
    current = None
    for line in text.splitlines():
        heading = re.match(r"layer (\d+), (forward|reverse) direction$", line)
        if heading:
            position = (int(heading[1]), 0 if heading[2] == "forward" else 1)
            continue
        step = re.match(r"t=(\d+)\b", line)
        if step:
            current = {"x": parse_vector(VECTOR.findall(line)[-1]), "gates": {}}
            steps[(*position, int(step[1]))] = current
            continue
        if line.startswith("  previous state"):
            vectors = VECTOR.findall(line)
            current["h_prev"] = parse_vector(vectors[0])
            if len(vectors) > 1:
                current["c_prev"] = parse_vector(vectors[1])
            continue
        gate = re.match(r"  (\S+)\s+= ", line)
        if gate:
            vectors = VECTOR.findall(line)
            pre = parse_vector(vectors[0]) if len(vectors) == 2 else None
            current["gates"][gate[1]] = (pre, parse_vector(vectors[-1]))
    return steps


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as error:  # argparse exits on invalid arguments
            code = error.code
    return code, out.getvalue(), err.getvalue()


def check_printed_steps(printed: dict, expected, mode: str, lengths, tolerance):
    """Compare parsed steps with expected_steps output for every valid step."""
    gate_fields = {
        "LSTM": {"i": 0, "f": 1, "g": 2, "o": 3},
        "GRU": {"r": 0, "z": 1, "n": 2},
        "RNN": {"a": 0},
    }[mode]
    checked = 0
    for layer, directions in enumerate(expected):
        for direction, fields in enumerate(directions):
            for t in range(lengths):
                step = printed[(layer, direction, t)]
                hidden = fields["pre_activation"].shape[-1] // len(gate_fields)
                for name, block in gate_fields.items():
                    pre, value = step["gates"][name]
                    columns = slice(block * hidden, (block + 1) * hidden)
                    want_pre = fields["pre_activation"][t, 0, columns]
                    if mode == "RNN":
                        # The RNN prints a on its own line, with no activation.
                        pre, value = value, None
                    else:
                        want = fields[name][t, 0]
                        assert value == pytest.approx(want.tolist(), abs=tolerance)
                    assert pre == pytest.approx(want_pre.tolist(), abs=tolerance)
                new_h = step["gates"]["h'"][1]
                assert new_h == pytest.approx(fields["h"][t, 0].tolist(), abs=tolerance)
                if mode == "LSTM":
                    new_c = step["gates"]["c'"][1]
                    want_c = fields["c"][t, 0].tolist()
                    assert new_c == pytest.approx(want_c, abs=tolerance)
                checked += 1
    return checked


# Printed steps of a layer with random weights.


@pytest.mark.parametrize(
    ("model", "reference_kind"),
    [("lstm", nn.LSTM), ("gru", nn.GRU), ("rnn", nn.RNN)],
)
def test_cli_steps_match_torch(model, reference_kind):
    argv = ["explain", "--model", model, "--input", "0.1,0.2,0.3"]
    code, out, err = run_cli(argv + ["--hidden", "3", "--seed", "4", "--digits", "6"])
    assert code == 0, err

    torch.manual_seed(4)
    reference = reference_kind(1, 3).double()
    x = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).reshape(3, 1, 1)
    h0 = torch.zeros(1, 1, 3, dtype=torch.float64)
    expected = expected_steps(reference, x, h0, torch.zeros_like(h0))

    printed = parse_steps(out)
    assert sorted(printed) == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]
    assert [printed[(0, 0, t)]["x"] for t in range(3)] == [[0.1], [0.2], [0.3]]
    assert printed[(0, 0, 0)]["h_prev"] == [0.0, 0.0, 0.0]
    assert printed[(0, 0, 1)]["h_prev"] == printed[(0, 0, 0)]["gates"]["h'"][1]
    # 6 printed digits round by 5e-7; float32 arithmetic adds about 1e-7.
    mode = model.upper()
    assert check_printed_steps(printed, expected, mode, 3, 1.5e-6) == 3


def test_cli_prints_torch_weights():
    code, out, _ = run_cli(["explain", "--model", "lstm", "--weights", "--digits", "6"])
    assert code == 0
    torch.manual_seed(0)
    reference = nn.LSTM(1, 2)
    blocks = dict(re.findall(r"(\w+) = (\[\[.*?\]\]|\[[^\[\]]*\])", out))
    w_ih = reference.weight_ih_l0.detach().chunk(4)
    b_hh = reference.bias_hh_l0.detach().chunk(4)
    w_hh = reference.weight_hh_l0.detach().chunk(4)
    for index, gate in enumerate("ifgo"):
        for name, weight in ((f"W_i{gate}", w_ih), (f"W_h{gate}", w_hh)):
            rows = [parse_vector(row) for row in VECTOR.findall(blocks[name])]
            printed_w = [value for row in rows for value in row]
            want = weight[index].flatten().tolist()
            assert printed_w == pytest.approx(want, abs=5e-7), name
        printed_b = parse_vector(blocks[f"b_h{gate}"][1:-1])
        assert printed_b == pytest.approx(b_hh[index].tolist(), abs=5e-7), gate


def test_cli_bidirectional_two_layers_match_torch():
    argv = ["explain", "--model", "gru", "--num-layers", "2", "--bidirectional"]
    code, out, err = run_cli(argv + ["--input", "0.5,-1,2,0", "--digits", "6"])
    assert code == 0, err

    torch.manual_seed(0)
    reference = nn.GRU(1, 2, num_layers=2, bidirectional=True).double()
    x = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64).reshape(4, 1, 1)
    expected = expected_steps(reference, x, torch.zeros(4, 1, 2, dtype=torch.float64))
    printed = parse_steps(out)
    assert len(printed) == 16
    assert check_printed_steps(printed, expected, "GRU", 4, 1.5e-6) == 16
    # The reverse direction starts at the last step from the initial state.
    reverse_order = [key[2] for key in printed if key[:2] == (0, 1)]
    assert reverse_order == [3, 2, 1, 0]
    assert printed[(0, 1, 3)]["h_prev"] == [0.0, 0.0]
    layer_1_input = printed[(1, 0, 2)]["x"]
    expected_input = torch.cat([expected[0][0]["h"][2, 0], expected[0][1]["h"][2, 0]])
    assert layer_1_input == pytest.approx(expected_input.tolist(), abs=1.5e-6)


def test_format_steps_lstm_projection_and_lengths():
    torch.manual_seed(11)
    reference = nn.LSTM(2, 3, proj_size=2, dtype=torch.float64)
    layer = rnnkit.from_torch(reference).eval()
    x = torch.randn(5, 2, 2, dtype=torch.float64)
    traced = rnnkit.trace(layer, x, lengths=[5, 3])

    text = explain.format_steps(traced, row=1, digits=8)

    assert "h' = W_hr (o * tanh(c'))" in text
    printed = parse_steps(text)
    assert sorted(printed) == [(0, 0, 0), (0, 0, 1), (0, 0, 2)]
    zeros = torch.zeros(1, 2, 2, dtype=torch.float64)
    expected = expected_steps(
        reference, x, zeros, torch.zeros(1, 2, 3, dtype=torch.float64), [5, 3]
    )
    for fields in expected[0]:
        for name, value in fields.items():
            fields[name] = value[:, 1:]
    assert check_printed_steps(printed, expected, "LSTM", 3, 1e-8) == 3


def test_format_steps_limits_units_and_labels():
    torch.manual_seed(12)
    layer = rnnkit.GRU(1, 6).eval()
    traced = rnnkit.trace(layer, torch.randn(2, 1, 1))
    text = explain.format_steps(traced, max_units=2, step_labels=["Jan", "Feb"])
    assert "t=0  (Jan)  x = " in text
    assert "t=1  (Feb)  x = " in text
    new_h = [line for line in text.splitlines() if line.startswith("  h'")]
    assert len(new_h) == 2
    assert new_h[0].endswith(", ... 4 more]")


# Plot.


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    ("layer", "titles"),
    [
        (
            rnnkit.LSTM(1, 3),
            ["input x", "input gate i", "forget gate f", "cell candidate g",
             "output gate o", "cell state c", "hidden state h",
             "hidden-state trajectory"],
        ),
        (
            rnnkit.GRU(1, 3),
            ["input x", "reset gate r", "update gate z", "candidate state n",
             "hidden state h", "hidden-state trajectory"],
        ),
        (
            rnnkit.RNN(1, 3),
            ["input x", "pre-activation a", "hidden state h",
             "hidden-state trajectory"],
        ),
    ],
)  # fmt: skip
def test_plot_panels_and_png(tmp_path, layer, titles):
    torch.manual_seed(13)
    traced = rnnkit.trace(layer.eval(), torch.randn(7, 1, 1))

    figure = explain.plot_trace(traced)

    assert [ax.get_title(loc="left") for ax in figure.axes[: len(titles)]] == titles
    assert explain.panel_titles(traced) == titles
    steps = traced[0][0]
    heatmaps = {ax.get_title(loc="left"): ax for ax in figure.axes if ax.images}
    for name in (*steps.gate_names, "h"):
        title = explain.PANEL_TITLES[name]
        shown = np.asarray(heatmaps[title].images[0].get_array())
        np.testing.assert_array_equal(shown, getattr(steps, name)[:, 0].numpy().T)
    path = explain.save_figure(figure, tmp_path / "gates.png")
    width, height = png_size(path)
    assert width == round(figure.get_figwidth() * 100)
    assert height == round(figure.get_figheight() * 100)


def test_plot_bidirectional_columns_and_layer():
    torch.manual_seed(14)
    layer = rnnkit.GRU(1, 2, num_layers=2, bidirectional=True).eval()
    traced = rnnkit.trace(layer, torch.randn(5, 1, 1))
    figure = explain.plot_trace(traced, layer=0)
    titles = [
        ax.get_title(loc="left") for ax in figure.axes if ax.get_title(loc="left")
    ]
    assert "update gate z (forward)" in titles
    assert "update gate z (reverse)" in titles
    shown = {
        ax.get_title(loc="left"): np.asarray(ax.images[0].get_array())
        for ax in figure.axes
        if ax.images
    }
    np.testing.assert_array_equal(
        shown["update gate z (reverse)"], traced[0][1].z[:, 0].numpy().T
    )


def test_cli_plot_writes_png(tmp_path):
    path = tmp_path / "gru.png"
    code, out, err = run_cli(["explain", "--model", "gru", "--plot", str(path)])
    assert code == 0, err
    assert out == f"wrote {path}\n"
    torch.manual_seed(0)
    layer = rnnkit.GRU(1, 2).eval()
    traced = rnnkit.trace(layer, torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1, 1))
    figure = explain.plot_trace(traced)
    expected = (round(figure.get_figwidth() * 100), round(figure.get_figheight() * 100))
    assert png_size(path) == expected


# A checkpoint trained by ``rnnkit train``.


@pytest.fixture(scope="module")
def airline_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    argv = ["train", "--data", str(AIRLINE), "--model", "lstm", "--hidden-size", "3"]
    argv += ["--epochs", "2", "--context", "12", "--horizon", "3"]
    code, _, err = run_cli(argv + ["--out", str(out / "run"), "--quiet"])
    assert code == 0, err
    return out / "run" / "lstm.pt"


def airline_window(payload: dict, start: int | None = None) -> np.ndarray:
    """Return the scaled window as a test computes it from the CSV file."""
    values = pd.read_csv(AIRLINE)["Passengers"].to_numpy(dtype=np.float64)
    context = payload["data"]["context"]
    start = len(values) - context if start is None else start
    mean = payload["scaler"]["mean"][0]
    scale = payload["scaler"]["scale"][0]
    return (values[start : start + context] - mean) / scale


def test_cli_checkpoint_steps_match_torch(airline_checkpoint):
    code, out, err = run_cli(
        ["explain", "--checkpoint", str(airline_checkpoint), "--digits", "6"]
    )
    assert code == 0, err
    assert "window: rows 132 to 143 (1960-01-01 to 1960-12-01)" in out

    payload = torch.load(airline_checkpoint, weights_only=True)
    reference = nn.LSTM(1, 3).double()
    weights = {
        name.removeprefix("recurrent."): value.double()
        for name, value in payload["state_dict"].items()
        if name.startswith("recurrent.")
    }
    reference.load_state_dict(weights)
    window = airline_window(payload)
    x = torch.from_numpy(window).reshape(12, 1, 1)
    h0 = torch.zeros(1, 1, 3, dtype=torch.float64)
    expected = expected_steps(reference, x, h0, torch.zeros_like(h0))

    printed = parse_steps(out)
    assert len(printed) == 12
    printed_x = [printed[(0, 0, t)]["x"][0] for t in range(12)]
    # The model reads float32 input, so x is exact to float32 rounding.
    assert printed_x == pytest.approx(window.tolist(), abs=1e-6)
    assert check_printed_steps(printed, expected, "LSTM", 12, 3e-6) == 12
    assert "t=0  (1960-01-01)" in out


def test_cli_checkpoint_window_start(airline_checkpoint):
    argv = ["explain", "--checkpoint", str(airline_checkpoint), "--start", "0"]
    code, out, err = run_cli(argv + ["--digits", "6"])
    assert code == 0, err
    assert "window: rows 0 to 11 (1949-01-01 to 1949-12-01)" in out
    payload = torch.load(airline_checkpoint, weights_only=True)
    printed = parse_steps(out)
    printed_x = [printed[(0, 0, t)]["x"][0] for t in range(12)]
    assert printed_x == pytest.approx(airline_window(payload, 0).tolist(), abs=1e-6)


def test_cli_checkpoint_plot(airline_checkpoint, tmp_path):
    path = tmp_path / "airline.png"
    argv = ["explain", "--checkpoint", str(airline_checkpoint), "--plot", str(path)]
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert out == f"wrote {path}\n"
    width, height = png_size(path)
    assert width > 0
    assert height > width

    layer_path = tmp_path / "layer0.png"
    code, _, err = run_cli(argv[:-1] + [str(layer_path), "--layer", "0"])
    assert code == 0, err
    assert png_size(layer_path) == (width, height)


# Invalid input.


def assert_cli_error(argv: list[str], message: str) -> None:
    code, out, err = run_cli(argv)
    assert code == 2
    assert out == ""
    assert err.startswith("rnnkit: error: ")
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,abc,0.3", "item 2 ('abc') is not a number"),
        ("0.1,,0.3", "item 2 ('') is not a number"),
        ("", "item 1 ('') is not a number"),
        ("0.1;0.2", "item 1 ('0.1;0.2') is not a number"),
        ("0.1,nan", "item 2 ('nan') is not a finite number"),
        ("inf", "item 1 ('inf') is not a finite number"),
    ],
)
def test_cli_rejects_unparsable_input(text, message):
    assert_cli_error(["explain", "--model", "lstm", "--input", text], message)


def test_cli_rejects_missing_checkpoint(tmp_path):
    path = tmp_path / "missing.pt"
    assert_cli_error(
        ["explain", "--checkpoint", str(path)], f"checkpoint not found: {path}"
    )


def test_cli_rejects_non_checkpoint_files(tmp_path):
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint\n")
    assert_cli_error(
        ["explain", "--checkpoint", str(text_file)], "is not an rnnkit checkpoint"
    )
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    assert_cli_error(
        ["explain", "--checkpoint", str(other)], "is not an rnnkit forecaster"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hidden", "0"], "invalid --hidden 0: expected an integer >= 1"),
        (["--num-layers", "0"], "invalid --num-layers 0"),
        (["--units", "0"], "invalid --units 0"),
        (["--digits", "13"], "invalid --digits 13: expected 0 to 12"),
        (["--start", "3"], "--start applies to --checkpoint"),
        (["--layer", "0"], "--layer applies to --plot"),
        (["--plot", "gates.jpg"], "expected a file name ending in .png"),
        (["--plot", "no/such/dir/gates.png"], "directory 'no/such/dir' not found"),
        (["--plot", "PLACEHOLDER", "--layer", "2"], "expected a layer in [0, 1)"),
    ],
)
def test_cli_rejects_invalid_model_options(tmp_path, options, message):
    options = [str(tmp_path / "p.png") if o == "PLACEHOLDER" else o for o in options]
    assert_cli_error(["explain", "--model", "rnn", *options], message)


def test_cli_rejects_checkpoint_with_moved_data(airline_checkpoint, tmp_path):
    payload = torch.load(airline_checkpoint, weights_only=True)
    payload["data"]["source"] = str(tmp_path / "moved.csv")
    moved = tmp_path / "moved.pt"
    torch.save(payload, moved)
    assert_cli_error(
        ["explain", "--checkpoint", str(moved)],
        "cannot read the series the checkpoint was trained on: data file not found",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--input", "1,2"], "--input applies to --model"),
        (["--hidden", "4"], "--hidden applies to --model"),
        (["--seed", "1"], "--seed applies to --model"),
        (["--start", "200"], "invalid window start 200"),
        (["--start", "-1"], "invalid window start -1"),
    ],
)
def test_cli_rejects_invalid_checkpoint_options(airline_checkpoint, options, message):
    assert_cli_error(
        ["explain", "--checkpoint", str(airline_checkpoint), *options], message
    )


def test_cli_requires_model_or_checkpoint():
    code, _, err = run_cli(["explain"])
    assert code == 2
    assert "one of the arguments --model --checkpoint is required" in err
    code, _, err = run_cli(["explain", "--model", "gru", "--checkpoint", "x.pt"])
    assert code == 2
    assert "not allowed with argument" in err


def test_library_rejects_invalid_arguments(tmp_path):
    traced = rnnkit.trace(rnnkit.GRU(1, 2).eval(), torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match=r"expected a batch row in \[0, 2\), got 2"):
        explain.format_steps(traced, row=2)
    with pytest.raises(ValueError, match=r"one step label per time step \(3\), got 1"):
        explain.format_steps(traced, step_labels=["a"])
    with pytest.raises(ValueError, match="expected max_units >= 1, got 0"):
        explain.format_steps(traced, max_units=0)
    with pytest.raises(ValueError, match=r"expected a layer in \[0, 1\), got 1"):
        explain.plot_trace(traced, layer=1)
    figure = explain.plot_trace(traced)
    with pytest.raises(ValueError, match="ending in .png, got 'gates.svg'"):
        explain.save_figure(figure, "gates.svg")
