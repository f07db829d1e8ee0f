"""The walkthrough in examples/ and ``rnnkit demo``, checked against torch.nn."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit.cli import main
from rnnkit.tutorial import build_layer, run_twice

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tutorial.py"
TORCH_TYPES = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}


def torch_walkthrough(kind: str) -> list[dict[str, list]]:
    """Run torch.nn's layer, seeded like the walkthrough, twice on the sequence."""
    torch.manual_seed(0)
    layer = TORCH_TYPES[kind](input_size=1, hidden_size=2, batch_first=True)
    x = torch.tensor([[[0.1], [0.2], [0.3]]])
    h0 = torch.zeros(1, 1, 2)
    state = (h0, torch.zeros(1, 1, 2)) if kind == "LSTM" else h0
    calls = []
    with torch.no_grad():
        for _ in range(2):
            output, state = layer(x, state)
            h_n, c_n = state if kind == "LSTM" else (state, None)
            call = {"output": output.tolist(), "h_n": h_n.tolist()}
            if c_n is not None:
                call["c_n"] = c_n.tolist()
            calls.append(call)
    return calls


def parse_example_output(text: str) -> dict[str, list[dict[str, list]]]:
    layers: dict[str, list[dict[str, list]]] = {}
    current: list[dict[str, list]] = []
    for line in text.splitlines():
        header = re.match(r"^(RNN|LSTM|GRU)\(", line)
        if header:
            current = layers.setdefault(header.group(1), [])
        elif line.strip().startswith("from "):
            current.append({})
        elif ":" in line:
            name, value = line.strip().split(":", 1)
            current[-1][name] = ast.literal_eval(value.strip())
    return layers


def test_example_prints_torch_numbers():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True
    )
    printed = parse_example_output(result.stdout)
    assert sorted(printed) == ["GRU", "LSTM", "RNN"]
    for kind, calls in printed.items():
        expected = torch_walkthrough(kind)
        assert len(calls) == 2
        for actual_call, expected_call in zip(calls, expected, strict=True):
            assert actual_call.keys() == expected_call.keys()
            for name, value in expected_call.items():
                torch.testing.assert_close(
                    torch.tensor(actual_call[name]),
                    torch.tensor(value),
                    rtol=1e-6,
                    atol=1e-6,
                )


def test_second_call_continues_from_returned_state():
    printed = torch_walkthrough("GRU")
    # Starting from the returned state changes the first output step.
    assert printed[0]["output"][0][0] != printed[1]["output"][0][0]


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_tutorial_module_matches_torch(kind):
    results = run_twice(build_layer(kind))
    expected = torch_walkthrough(kind)
    for index, call in enumerate(("first", "second")):
        for name, value in expected[index].items():
            key = f"{call}_output" if name == "output" else f"{call}_{name[0]}"
            torch.testing.assert_close(
                results[key], torch.tensor(value), rtol=1e-6, atol=1e-6
            )


def test_demo_command_prints_walkthrough(capsys):
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out
    expected = torch_walkthrough("LSTM")
    c_n = [[[round(v, 4) for v in expected[1]["c_n"][0][0]]]]
    assert "LSTM(input_size=1, hidden_size=2, batch_first=True)" in printed
    assert f"c_n    = {c_n}" in printed
    assert printed.count("call 2, from the returned state") == 3
