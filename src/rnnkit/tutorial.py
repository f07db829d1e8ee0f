"""The classic first look at recurrent layers, run on rnnkit's RNN, LSTM and GRU.

A layer with input_size=1, hidden_size=2 and batch_first=True reads the batch
of one sequence [[0.1], [0.2], [0.3]] from a zero initial state; then it reads
the same sequence again, starting from the state it returned, which is how a
recurrent layer carries memory from one call to the next.
``rnnkit demo`` prints this walkthrough, and ``examples/tutorial.py`` is the
same walkthrough as a script.
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit

SEQUENCE = [[[0.1], [0.2], [0.3]]]
LAYER_TYPES = {"RNN": rnnkit.RNN, "LSTM": rnnkit.LSTM, "GRU": rnnkit.GRU}


def build_layer(kind: str, seed: int = 0) -> nn.Module:
    """Return a new RNN, LSTM or GRU (``kind``) with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return LAYER_TYPES[kind](input_size=1, hidden_size=2, batch_first=True)


def run_twice(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Run the sequence from a zero state, then again from the returned state."""
    x = torch.tensor(SEQUENCE)
    h0 = torch.zeros(1, 1, 2)
    first_state = (h0, torch.zeros(1, 1, 2)) if isinstance(layer, rnnkit.LSTM) else h0

    with torch.no_grad():
        first_output, state = layer(x, first_state)
        second_output, second_state = layer(x, state)

    results = {"first_output": first_output, "second_output": second_output}
    for name, value in (("first", state), ("second", second_state)):
        if isinstance(value, tuple):
            results[f"{name}_h"], results[f"{name}_c"] = value
        else:
            results[f"{name}_h"] = value
    return results


def format_walkthrough(seed: int = 0) -> str:
    """Return the printed walkthrough for the RNN, the LSTM and the GRU."""
    lines = [f"input x = {SEQUENCE}  (batch 1, 3 time steps, 1 feature)"]
    for kind in LAYER_TYPES:
        layer = build_layer(kind, seed)
        results = run_twice(layer)
        lines += ["", f"{kind}(input_size=1, hidden_size=2, batch_first=True)"]
        for call in ("first", "second"):
            start = "a zero state" if call == "first" else "the returned state"
            lines.append(f"  call {1 if call == 'first' else 2}, from {start}:")
            lines.append(f"    output = {_format(results[call + '_output'])}")
            lines.append(f"    h_n    = {_format(results[call + '_h'])}")
            if call + "_c" in results:
                lines.append(f"    c_n    = {_format(results[call + '_c'])}")
    return "\n".join(lines)


def _format(tensor: torch.Tensor) -> str:
    return str([[[round(v, 4) for v in row] for row in seq] for seq in tensor.tolist()])


def main() -> None:
    print(format_walkthrough())


if __name__ == "__main__":
    main()
