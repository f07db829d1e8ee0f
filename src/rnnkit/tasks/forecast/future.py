"""Forecast past the end of a series with a trained checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnnkit.tasks.forecast.data import BUILTIN_SOURCE, Series, future_dates, load_series
from rnnkit.tasks.forecast.model import Forecaster
from rnnkit.tasks.forecast.windows import Scaler


@dataclass
class FutureForecast:
    series: Series
    values: np.ndarray  # (horizon,) in the units of the target
    dates: list[pd.Timestamp] | None  # None when the series has no dates
    model_name: str


def forecast_future(
    model: Forecaster,
    metadata: dict,
    data: str | None = None,
    horizon: int | None = None,
    fill: str | None = None,
) -> FutureForecast:
    """Forecast ``horizon`` steps past the last row of the series.

    The series is ``data`` when given, else the one the model was trained on,
    read with the same columns, date column and scaler. Missing values are
    filled with ``fill`` (see ``load_series``), which defaults to the fill
    method of training. ``horizon`` defaults to the horizon the model was
    trained for.
    """
    config = metadata["model"]
    recorded = metadata["data"]
    horizon = config["horizon"] if horizon is None else horizon
    if horizon < 1:
        raise ValueError(f"invalid horizon {horizon}: expected an integer >= 1")
    if config["strategy"] == "direct" and horizon > config["horizon"]:
        raise ValueError(
            f"this model was trained to forecast {config['horizon']} steps, but "
            f"--horizon {horizon} was requested; use --horizon {config['horizon']} "
            "or less, or train with --strategy recursive"
        )
    if data is None and recorded["source"] != BUILTIN_SOURCE:
        data = recorded["source"]
        if not Path(data).exists():
            raise ValueError(
                f"the series this model was trained on, {data}, was not found; "
                "pass the series to forecast with --data"
            )

    series = load_series(
        data,
        columns=recorded["columns"],
        date_column=recorded["date_column"],
        fill=recorded["fill"] if fill is None else fill,
        season=recorded["season"],
    )
    context = recorded["context"]
    if len(series) < context:
        raise ValueError(
            f"series too short: the model reads a context of {context} rows, but "
            f"the data has {len(series)}"
        )

    scaler = Scaler.from_dict(metadata["scaler"])
    window = scaler.transform(series.values[-context:]).astype(np.float32)
    with torch.no_grad():
        scaled = model.forecast(torch.from_numpy(window)[None], horizon)[0]
    values = scaler.inverse_target(scaled.numpy().astype(np.float64))
    dates = None
    if series.dates is not None:
        dates = future_dates(series.dates, series.frequency, horizon)
    return FutureForecast(series, values, dates, config["cell"])
