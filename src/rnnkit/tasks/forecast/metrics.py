"""Forecast accuracy metrics, all in the units of the series.

For truth y_t and forecast f_t over the n scored points:

    MAE   = mean |y_t - f_t|
    RMSE  = sqrt(mean (y_t - f_t)^2)
    sMAPE = 100 * mean 2 |y_t - f_t| / (|y_t| + |f_t|)   (a 0/0 term counts as 0)
    MASE  = MAE / mean_{t=m..N-1} |x_t - x_{t-m}|

where x_0..x_{N-1} is the training part and m the season length, so MASE
divides by the in-sample error of seasonal naive on the training part: below 1
beats it, above 1 loses to it.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("mae", "rmse", "smape", "mase")


def mae(truth: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.mean(np.abs(truth - forecast)))


def rmse(truth: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.sqrt(np.mean((truth - forecast) ** 2)))


def smape(truth: np.ndarray, forecast: np.ndarray) -> float:
    denominator = np.abs(truth) + np.abs(forecast)
    ratio = np.divide(
        2.0 * np.abs(truth - forecast),
        denominator,
        out=np.zeros_like(denominator, dtype=np.float64),
        where=denominator > 0,
    )
    return float(100.0 * np.mean(ratio))


def seasonal_naive_scale(training: np.ndarray, season: int) -> float:
    """Return the mean absolute seasonal difference of the training part."""
    if len(training) <= season:
        raise ValueError(
            f"the training part has {len(training)} rows, too few for season "
            f"length {season}: MASE needs more than one season of training data"
        )
    return float(np.mean(np.abs(training[season:] - training[:-season])))


def mase(
    truth: np.ndarray, forecast: np.ndarray, training: np.ndarray, season: int
) -> float:
    # NOTE: a training part that repeats exactly every season has a scale of 0;
    # MASE is then undefined and returned as NaN.
    scale = seasonal_naive_scale(training, season)
    return mae(truth, forecast) / scale if scale > 0 else float("nan")


def score(
    truth: np.ndarray, forecast: np.ndarray, training: np.ndarray, season: int
) -> dict[str, float]:
    """Return every metric of ``forecast`` against ``truth`` by name."""
    return {
        "mae": mae(truth, forecast),
        "rmse": rmse(truth, forecast),
        "smape": smape(truth, forecast),
        "mase": mase(truth, forecast, training, season),
    }
