"""Metrics and baselines against values worked out by hand."""

import math

import numpy as np
import pytest

from rnnkit.tasks.forecast import baselines
from rnnkit.tasks.forecast.metrics import mae, mase, rmse, score, smape


def test_mae_rmse_smape_by_hand():
    truth = np.array([1.0, 2.0, 4.0])
    forecast = np.array([2.0, 2.0, 2.0])

    assert mae(truth, forecast) == pytest.approx(1.0)
    assert rmse(truth, forecast) == pytest.approx(math.sqrt(5 / 3))
    # 2|e|/(|y|+|f|): 2/3, 0, 4/6
    assert smape(truth, forecast) == pytest.approx(100 * (2 / 3 + 0 + 2 / 3) / 3)


def test_smape_counts_zero_over_zero_as_zero():
    assert smape(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0


def test_mase_divides_by_seasonal_naive_training_error():
    training = np.array([1.0, 2.0, 4.0, 7.0])  # season 2 differences: 3, 5

    value = mase(np.array([10.0]), np.array([6.0]), training, season=2)

    assert value == pytest.approx(4.0 / 4.0)


def test_score_returns_every_metric():
    result = score(np.ones(3), np.zeros(3), np.arange(5.0), season=1)

    assert set(result) == {"mae", "rmse", "smape", "mase"}


def test_naive_repeats_value_before_origin():
    y = np.arange(10.0)

    forecast = baselines.naive(y, np.array([6, 8]), horizon=2, total=10)

    assert forecast.tolist() == [5, 5, 7, 7]


def test_seasonal_naive_repeats_last_season():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8], dtype=float)

    forecast = baselines.seasonal_naive(y, np.array([5, 8]), horizon=3, total=9,
                                        season=2)  # fmt: skip

    # From origin 5 the last season is y[3], y[4]; the last block has one row.
    assert forecast.tolist() == [3, 4, 3, 6]


def test_ets_fits_airline_like_series_and_beats_naive():
    months = np.arange(120)
    y = 100 + months + 20 * np.sin(2 * np.pi * months / 12)
    origins = np.array([96, 108])

    fitted = baselines.ets(y, 96, origins, horizon=12, total=120, season=12)
    naive = baselines.naive(y, origins, horizon=12, total=120)

    assert fitted is not None
    assert fitted.forecast.shape == (24,)
    assert mae(y[96:], fitted.forecast) < mae(y[96:], naive)
