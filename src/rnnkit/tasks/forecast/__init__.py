"""Forecast a time series with recurrent models and score them against baselines.

The pipeline, one module a step:

    data         read a CSV file or the built-in series and check it
    windows      split in time, scale on the training part, cut windows
    model        the recurrent forecaster on rnnkit's RNN, LSTM and GRU
    training     Adam on MSE with early stopping on validation loss
    metrics      MAE, RMSE, sMAPE and MASE
    baselines    naive, seasonal naive and ETS
    compare      the whole comparison, returning results without writing files
    future       forecasting past the end of a series from a checkpoint
    checkpoint   saving and loading trained models
    outputs      results.json, forecast.csv, forecast.png and checkpoints
"""

from rnnkit.tasks.forecast.checkpoint import load_checkpoint, save_checkpoint
from rnnkit.tasks.forecast.compare import (
    CompareResult,
    CompareSettings,
    ModelResult,
    prepare,
    run_compare,
)
from rnnkit.tasks.forecast.data import Series, load_series
from rnnkit.tasks.forecast.future import FutureForecast, forecast_future
from rnnkit.tasks.forecast.model import Forecaster, ModelConfig
from rnnkit.tasks.forecast.training import EpochReport, TrainConfig, fit

__all__ = [
    "CompareResult",
    "CompareSettings",
    "EpochReport",
    "Forecaster",
    "FutureForecast",
    "ModelConfig",
    "ModelResult",
    "Series",
    "TrainConfig",
    "fit",
    "forecast_future",
    "load_checkpoint",
    "load_series",
    "prepare",
    "run_compare",
    "save_checkpoint",
]
