"""Write results, forecasts, plots and checkpoints to an output directory.

Files are first written to a temporary directory beside the output directory
and then moved into it one by one with ``os.replace``, so an error while
writing leaves no half-written file in the output directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from rnnkit.tasks.forecast.checkpoint import save_checkpoint
from rnnkit.tasks.forecast.compare import CompareResult, best_by_metric
from rnnkit.tasks.forecast.future import FutureForecast
from rnnkit.tasks.forecast.plots import plot_comparison, plot_future


def check_output_dir(out_dir: Path) -> None:
    """Raise ValueError when ``out_dir`` exists but is not a directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(
            f"output path {out_dir} exists and is not a directory; choose another --out"
        )


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary directory whose files move into ``out_dir`` on success."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield staging
        out_dir.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_comparison(
    result: CompareResult, out_dir: Path, plot: bool = True
) -> list[Path]:
    """Write results.json, forecast.csv, forecast.png and one checkpoint per model.

    Returns the paths written, inside ``out_dir``.
    """
    names = []
    with staged_directory(out_dir) as staging:
        _write_json(comparison_record(result), staging / "results.json")
        comparison_frame(result).to_csv(staging / "forecast.csv", index=False)
        names += ["results.json", "forecast.csv"]
        if plot:
            plot_comparison(result, staging / "forecast.png")
            names.append("forecast.png")
        for name, payload in result.checkpoints.items():
            save_checkpoint(payload, staging / f"{name}.pt")
            names.append(f"{name}.pt")
    return [Path(out_dir) / name for name in names]


def comparison_record(result: CompareResult) -> dict:
    """Return the JSON-ready record of a comparison: settings, data, split, scores."""
    series, split = result.prepared.series, result.prepared.split
    parts = {}
    for part, (start, end) in {
        "train": (0, split.train_end),
        "validation": (split.train_end, split.val_end),
        "test": (split.val_end, split.total),
    }.items():
        parts[part] = {"rows": end - start, "first_row": start, "last_row": end - 1}
        if series.dates is not None:
            parts[part]["first_date"] = series.dates[start].isoformat()
            parts[part]["last_date"] = series.dates[end - 1].isoformat()
    return {
        "settings": result.settings.to_dict(),
        "data": {
            "source": series.source,
            "columns": series.columns,
            "target": series.columns[0],
            "date_column": series.date_column,
            "rows": len(series),
            "frequency": series.frequency,
            "season": series.season,
            "split": parts,
        },
        "models": [
            {
                "name": row.name,
                "kind": row.kind,
                "description": row.description,
                "parameters": row.parameters,
                "train_seconds": row.seconds,
                "epochs": row.epochs,
                "best_epoch": row.best_epoch,
                "metrics": {key: _finite_or_none(v) for key, v in row.metrics.items()},
            }
            for row in result.results
        ],
        "best": best_by_metric(result.results),
    }


def comparison_frame(result: CompareResult) -> pd.DataFrame:
    """Return one row per test point: date or row, origin, step, truth, forecasts."""
    series = result.prepared.series
    rows = result.test_rows
    frame = pd.DataFrame({"row": rows})
    if series.dates is not None:
        frame["date"] = format_dates(series.dates[rows])
        frame["origin_date"] = format_dates(series.dates[result.origins])
    frame["origin_row"] = result.origins
    frame["step"] = result.steps
    frame["truth"] = result.truth
    for row in result.results:
        frame[row.name] = row.forecast
    return frame


def write_future(
    forecast: FutureForecast, out_dir: Path, plot: bool = True
) -> list[Path]:
    """Write forecast.csv (and forecast.png) of a forecast past the series end."""
    column = forecast.series.columns[0]
    steps = range(1, len(forecast.values) + 1)
    frame = pd.DataFrame({"step": list(steps)})
    if forecast.dates is not None:
        frame["date"] = format_dates(pd.DatetimeIndex(forecast.dates))
    else:
        frame["row"] = [len(forecast.series) + step - 1 for step in steps]
    frame[column] = forecast.values

    names = ["forecast.csv"]
    with staged_directory(out_dir) as staging:
        frame.to_csv(staging / "forecast.csv", index=False)
        if plot:
            plot_future(forecast, staging / "forecast.png")
            names.append("forecast.png")
    return [Path(out_dir) / name for name in names]


def format_dates(dates: pd.DatetimeIndex) -> list[str]:
    """Format dates as ISO text, leaving out the time of day when it is always 0."""
    if (dates == dates.normalize()).all():
        return list(dates.strftime("%Y-%m-%d"))
    return list(dates.strftime("%Y-%m-%d %H:%M:%S"))


def _write_json(record: dict, path: Path) -> None:
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
