"""Checkpoints: round trip with weights_only loading, and clear errors."""

import numpy as np
import pytest
import torch

from rnnkit import GRU
from rnnkit.tasks.forecast.checkpoint import (
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from rnnkit.tasks.forecast.model import Forecaster, ModelConfig
from rnnkit.tasks.forecast.windows import Scaler


def make_payload(strategy="direct"):
    torch.manual_seed(0)
    model = Forecaster(ModelConfig(cell="gru", input_size=2, horizon=3,
                                   strategy=strategy, hidden_size=4))  # fmt: skip
    scaler = Scaler(mean=np.array([1.0, 2.0]), scale=np.array([3.0, 4.0]))
    payload = checkpoint_payload(model, scaler, data={"source": "x.csv"},
                                 training={"epochs": 1})  # fmt: skip
    return model, payload


def test_model_uses_rnnkit_layers():
    model, _ = make_payload()

    assert isinstance(model.recurrent, GRU)


def test_round_trip_restores_same_forecasts(tmp_path):
    model, payload = make_payload()
    path = tmp_path / "model.pt"
    save_checkpoint(payload, path)

    loaded, metadata = load_checkpoint(path)

    x = torch.randn(5, 7, 2)
    torch.testing.assert_close(loaded.forecast(x, 3), model.eval().forecast(x, 3))
    assert metadata["scaler"] == {"mean": [1.0, 2.0], "scale": [3.0, 4.0]}
    assert metadata["data"] == {"source": "x.csv"}
    assert isinstance(metadata["rnnkit_version"], str)


def test_checkpoint_loads_with_weights_only(tmp_path):
    _, payload = make_payload()
    path = tmp_path / "model.pt"
    save_checkpoint(payload, path)

    raw = torch.load(path, weights_only=True)

    assert raw["format"] == "rnnkit-forecaster"


def test_save_leaves_no_temporary_file(tmp_path):
    _, payload = make_payload()

    save_checkpoint(payload, tmp_path / "model.pt")

    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_recursive_model_forecasts_any_horizon(tmp_path):
    model, _ = make_payload(strategy="recursive")

    forecast = model.eval().forecast(torch.randn(2, 5, 2), 7)

    assert forecast.shape == (2, 7)


def test_direct_model_rejects_longer_horizon():
    model, _ = make_payload()

    with pytest.raises(ValueError, match="trained to forecast 3 steps"):
        model.forecast(torch.randn(1, 5, 2), 4)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")

    with pytest.raises(ValueError, match="is not an rnnkit checkpoint"):
        load_checkpoint(path)


def test_other_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)

    with pytest.raises(ValueError, match="not an rnnkit forecaster checkpoint"):
        load_checkpoint(path)
