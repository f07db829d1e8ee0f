"""Chronological split, scaler and windows."""

import numpy as np
import pytest

from rnnkit.tasks.forecast.windows import (
    Scaler,
    forecast_origins,
    make_windows,
    split_series,
)


def test_split_is_chronological_with_fractions():
    split = split_series(100, context=10, horizon=5, val_fraction=0.15,
                         test_fraction=0.15)  # fmt: skip

    assert split.sizes == (70, 15, 15)
    assert (split.train_end, split.val_end, split.total) == (70, 85, 100)


def test_split_too_short_says_what_is_needed():
    with pytest.raises(ValueError, match="series too short: 30 rows"):
        split_series(30, context=24, horizon=12, val_fraction=0.15,
                     test_fraction=0.15)  # fmt: skip


def test_scaler_uses_training_part_only():
    values = np.array([[1.0], [3.0], [100.0]])

    scaler = Scaler.fit(values[:2], ["x"])

    assert scaler.mean.tolist() == [2.0]
    assert scaler.scale.tolist() == [1.0]
    assert scaler.transform(values)[:, 0].tolist() == [-1.0, 1.0, 98.0]
    assert scaler.inverse_target(np.array([98.0])).tolist() == [100.0]


def test_scaler_rejects_constant_column():
    with pytest.raises(ValueError, match="column 'x' is constant"):
        Scaler.fit(np.full((5, 1), 3.0), ["x"])


def test_direct_windows_targets_stay_inside_part():
    scaled = np.arange(20, dtype=float)[:, None]

    inputs, targets = make_windows(scaled, 10, 15, context=4, horizon=3,
                                   strategy="direct")  # fmt: skip

    # Targets start at 10..12 and end by row 14; contexts reach back before 10.
    assert targets.tolist() == [[10, 11, 12], [11, 12, 13], [12, 13, 14]]
    assert inputs[0, :, 0].tolist() == [6, 7, 8, 9]


def test_training_windows_need_full_context():
    scaled = np.arange(10, dtype=float)[:, None]

    inputs, targets = make_windows(scaled, 0, 10, context=4, horizon=2,
                                   strategy="direct")  # fmt: skip

    assert len(inputs) == 5
    assert inputs[0, :, 0].tolist() == [0, 1, 2, 3]
    assert targets[-1].tolist() == [8, 9]


def test_recursive_windows_target_every_column_one_step():
    scaled = np.stack([np.arange(8.0), 10 + np.arange(8.0)], axis=1)

    inputs, targets = make_windows(scaled, 0, 8, context=3, horizon=4,
                                   strategy="recursive")  # fmt: skip

    assert inputs.shape == (5, 3, 2)
    assert targets[0].tolist() == [3, 13]


def test_forecast_origins_tile_test_part():
    split = split_series(100, context=10, horizon=6, val_fraction=0.15,
                         test_fraction=0.15)  # fmt: skip

    assert forecast_origins(split, 6).tolist() == [85, 91, 97]
