"""The layers' regularisers as options of ``rnnkit train`` and ``compare``."""

from pathlib import Path

import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks.forecast import load_checkpoint

DATA = Path(__file__).parents[2] / "shared" / "data"
FAST = ["--epochs", "2", "--hidden-size", "8", "--context", "12", "--quiet"]
REGULARISERS = ["--recurrent-dropout", "0.2", "--zoneout", "0.1"]


def train(out: Path, *extra: str) -> int:
    arguments = ["train", "--data", str(DATA / "airline-passengers.csv")]
    arguments += ["--model", "lstm", "--out", str(out), *FAST, *extra]
    return main(arguments)


def test_train_stores_regularisers_in_checkpoint(tmp_path):
    extra = [*REGULARISERS, "--weight-dropout", "0.3"]
    assert train(tmp_path / "run", *extra) == 0

    model, _ = load_checkpoint(tmp_path / "run" / "lstm.pt")
    assert model.recurrent.recurrent_dropout == 0.2
    assert model.recurrent.zoneout == 0.1
    assert model.recurrent.weight_dropout == 0.3


def test_regularisers_change_trained_weights(tmp_path):
    assert train(tmp_path / "plain") == 0
    assert train(tmp_path / "regularised", *REGULARISERS) == 0

    plain, _ = load_checkpoint(tmp_path / "plain" / "lstm.pt")
    regularised, _ = load_checkpoint(tmp_path / "regularised" / "lstm.pt")
    # Same seed, same data: only the regularisers' masks differ between runs.
    assert not torch.equal(
        plain.recurrent.weight_hh_l0, regularised.recurrent.weight_hh_l0
    )


def test_same_seed_repeats_regularised_training(tmp_path):
    assert train(tmp_path / "first", *REGULARISERS) == 0
    assert train(tmp_path / "second", *REGULARISERS) == 0

    first, _ = load_checkpoint(tmp_path / "first" / "lstm.pt")
    second, _ = load_checkpoint(tmp_path / "second" / "lstm.pt")
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name


@pytest.mark.parametrize(
    "flag, value", [("--zoneout", "1.0"), ("--recurrent-dropout", "-0.1"),
                    ("--weight-dropout", "1.5")],
)  # fmt: skip
def test_probability_out_of_range_is_rejected(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    arguments = ["compare", "--data", str(DATA / "airline-passengers.csv")]
    arguments += ["--out", str(out), *FAST, flag, value]

    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "expected a probability 0 <= p < 1" in error
    assert value in error
    assert not out.exists()
