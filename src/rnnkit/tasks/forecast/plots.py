"""Forecast plots, drawn with matplotlib's Agg renderer (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rnnkit.tasks.forecast.compare import CompareResult
from rnnkit.tasks.forecast.future import FutureForecast

# The plot shows this many test-part lengths of history before the test part,
# so that the test part stays readable on long series.
HISTORY_LENGTHS = 3


def plot_comparison(result: CompareResult, path: Path) -> None:
    """Plot history, test truth and every test forecast to ``path`` (PNG)."""
    series, split = result.prepared.series, result.prepared.split
    x = series.dates if series.dates is not None else np.arange(len(series))
    start = max(0, split.val_end - HISTORY_LENGTHS * (split.total - split.val_end))
    test = slice(split.val_end, split.total)

    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot(x[start : split.val_end], series.target[start : split.val_end],
              color="0.55", label="history")  # fmt: skip
    axes.plot(x[test], result.truth, color="black", linewidth=2, label="test truth")
    for row in result.results:
        style = "-" if row.kind == "recurrent" else "--"
        axes.plot(x[test], row.forecast, style, linewidth=1.2, label=row.name)
    axes.axvline(x[split.val_end], color="0.8", linewidth=1)
    axes.set_title(f"{series.columns[0]}: test forecasts, horizon "
                   f"{result.settings.horizon}")  # fmt: skip
    axes.set_ylabel(series.columns[0])
    axes.legend(loc="best", fontsize="small")
    figure.savefig(path, dpi=100)


def plot_future(forecast: FutureForecast, path: Path) -> None:
    """Plot the end of the series and the forecast past it to ``path`` (PNG)."""
    series = forecast.series
    horizon = len(forecast.values)
    shown = min(len(series), max(4 * horizon, 48))
    if series.dates is not None:
        x_history, x_future = series.dates[-shown:], forecast.dates
    else:
        x_history = np.arange(len(series) - shown, len(series))
        x_future = np.arange(len(series), len(series) + horizon)

    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot(x_history, series.target[-shown:], color="black", label="history")
    axes.plot(x_future, forecast.values, "o-", markersize=3,
              label=f"{forecast.model_name} forecast")  # fmt: skip
    axes.set_title(f"{series.columns[0]}: {horizon}-step forecast")
    axes.set_ylabel(series.columns[0])
    axes.legend(loc="best", fontsize="small")
    figure.savefig(path, dpi=100)
