"""Train recurrent forecasters and score them beside classical baselines.

``prepare`` reads and checks the data and every setting before anything is
trained, so that bad input fails fast. ``run_compare`` then trains one model
per cell kind, forecasts the test part from a sequence of origins that tile
it, and scores models and baselines on the same rows with the same metrics.
It returns results and writes no files, apart from the resume checkpoint of a
``RunCheckpoint`` when one is given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnnkit.distributed import is_main_process
from rnnkit.resume import RunCheckpoint
from rnnkit.tasks.forecast import baselines
from rnnkit.tasks.forecast.checkpoint import checkpoint_payload
from rnnkit.tasks.forecast.data import Series, load_series
from rnnkit.tasks.forecast.metrics import score
from rnnkit.tasks.forecast.model import (
    CELL_KINDS,
    Forecaster,
    ModelConfig,
    count_parameters,
)
from rnnkit.tasks.forecast.training import (
    ProgressCallback,
    TrainConfig,
    TrainResult,
    fit,
)
from rnnkit.tasks.forecast.windows import (
    STRATEGIES,
    Scaler,
    Split,
    forecast_origins,
    make_windows,
    split_series,
)

logger = logging.getLogger(__name__)


@dataclass
class CompareSettings:
    """Every setting of a comparison run; ``data`` None means the built-in series."""

    data: str | None = None
    columns: list[str] | None = None
    date_column: str | None = None
    fill: str | None = None
    season: int | None = None
    horizon: int = 12
    context: int = 24
    models: list[str] = field(default_factory=lambda: ["rnn", "lstm", "gru"])
    strategy: str = "direct"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_dropout: float = 0.0
    epochs: int = 100
    patience: int = 10
    learning_rate: float = 5e-3
    batch_size: int = 32
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    baselines: bool = True

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            patience=self.patience,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            seed=self.seed,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedData:
    series: Series
    split: Split
    scaler: Scaler
    scaled: np.ndarray  # (T, F)


@dataclass
class ModelResult:
    """One row of the results table, with the test forecast behind it."""

    name: str
    kind: str  # "recurrent" or "baseline"
    description: str
    parameters: int
    seconds: float
    epochs: int | None
    best_epoch: int | None
    metrics: dict[str, float]
    forecast: np.ndarray


@dataclass
class CompareResult:
    settings: CompareSettings
    prepared: PreparedData
    origins: np.ndarray  # forecast origin of each test row
    steps: np.ndarray  # steps ahead (1-based) of each test row
    truth: np.ndarray  # target over the test part
    results: list[ModelResult]
    checkpoints: dict[str, dict]  # model name -> checkpoint payload

    @property
    def test_rows(self) -> np.ndarray:
        return np.arange(self.prepared.split.val_end, self.prepared.split.total)


def check_settings(settings: CompareSettings) -> None:
    """Raise ValueError for the first setting that is out of range."""
    integers = [
        ("horizon", settings.horizon, 1),
        ("context", settings.context, 1),
        ("hidden size", settings.hidden_size, 1),
        ("number of layers", settings.num_layers, 1),
        ("epochs", settings.epochs, 1),
        ("patience", settings.patience, 1),
        ("batch size", settings.batch_size, 1),
    ]
    for label, value, minimum in integers:
        if value < minimum:
            raise ValueError(
                f"invalid {label} {value}: expected an integer >= {minimum}"
            )
    if not settings.learning_rate > 0:
        raise ValueError(
            f"invalid learning rate {settings.learning_rate}: expected a positive "
            "number"
        )
    probabilities = [
        ("dropout", settings.dropout),
        ("recurrent dropout", settings.recurrent_dropout),
        ("zoneout", settings.zoneout),
        ("weight dropout", settings.weight_dropout),
    ]
    for label, value in probabilities:
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"invalid {label} {value}: expected a probability 0 <= p < 1"
            )
    if settings.strategy not in STRATEGIES:
        raise ValueError(
            f"invalid strategy {settings.strategy!r}: expected one of "
            f"{', '.join(STRATEGIES)}"
        )
    if not settings.models:
        raise ValueError("no models requested: expected one or more of rnn, lstm, gru")
    for name in settings.models:
        if name not in CELL_KINDS:
            raise ValueError(
                f"unknown model {name!r}: expected one or more of "
                f"{', '.join(CELL_KINDS)}"
            )
    if len(set(settings.models)) != len(settings.models):
        raise ValueError(f"a model is listed twice in {','.join(settings.models)}")


def prepare(settings: CompareSettings) -> PreparedData:
    """Check the settings, read the series, split it and fit the scaler."""
    check_settings(settings)
    series = load_series(
        settings.data,
        columns=settings.columns,
        date_column=settings.date_column,
        fill=settings.fill,
        season=settings.season,
    )
    split = split_series(
        len(series),
        settings.context,
        settings.horizon,
        settings.val_fraction,
        settings.test_fraction,
        season=series.season,
    )
    scaler = Scaler.fit(series.values[: split.train_end], series.columns)
    return PreparedData(series, split, scaler, scaler.transform(series.values))


def run_compare(
    settings: CompareSettings,
    progress: ProgressCallback | None = None,
    prepared: PreparedData | None = None,
    run_state: RunCheckpoint | None = None,
) -> CompareResult:
    """Train every requested model, run the baselines and score them all.

    With ``run_state``, each model's training state is saved after every
    epoch, and models that ``run_state`` records as finished or in progress are
    restored or continued instead of trained from the start. The baselines
    run on rank 0 alone, because only rank 0 reports results.
    """
    if prepared is None:
        prepared = prepare(settings)
    series, split = prepared.series, prepared.split
    y = series.target

    origins = forecast_origins(split, settings.horizon)
    row_origins = np.concatenate(
        [np.full(min(settings.horizon, split.total - o), o) for o in origins]
    )
    steps = np.arange(split.val_end, split.total) - row_origins + 1
    truth = y[split.val_end :]
    training_target = y[: split.train_end]

    results, checkpoints = [], {}
    for name in settings.models:
        model, outcome = train_model(name, settings, prepared, progress, run_state)
        forecast = forecast_test(model, prepared, origins, settings)
        results.append(
            ModelResult(
                name=name,
                kind="recurrent",
                description=f"{name.upper()} {settings.num_layers}x"
                f"{settings.hidden_size}, {settings.strategy}",
                parameters=count_parameters(model),
                seconds=outcome.seconds,
                epochs=outcome.epochs_run,
                best_epoch=outcome.best_epoch,
                metrics=score(truth, forecast, training_target, series.season),
                forecast=forecast,
            )
        )
        checkpoints[name] = checkpoint_payload(
            model,
            prepared.scaler,
            data=data_record(series, settings),
            training={
                **settings.train_config().to_dict(),
                "epochs_run": outcome.epochs_run,
                "best_epoch": outcome.best_epoch,
                "best_val_loss": outcome.best_val_loss,
                "seconds": outcome.seconds,
            },
        )

    if settings.baselines and is_main_process():
        results.extend(
            run_baselines(y, split, origins, settings.horizon, series.season, truth)
        )
    return CompareResult(
        settings=settings,
        prepared=prepared,
        origins=row_origins,
        steps=steps,
        truth=truth,
        results=results,
        checkpoints=checkpoints,
    )


def train_model(
    name: str,
    settings: CompareSettings,
    prepared: PreparedData,
    progress: ProgressCallback | None = None,
    run_state: RunCheckpoint | None = None,
):
    """Build and train one forecaster; return it with its ``TrainResult``.

    A model that ``run_state`` records as finished is rebuilt from its saved
    weights without training.
    """
    split, scaled = prepared.split, prepared.scaled
    windows = {
        part: make_windows(
            scaled, start, end, settings.context, settings.horizon, settings.strategy
        )
        for part, start, end in (
            ("train", 0, split.train_end),
            ("val", split.train_end, split.val_end),
        )
    }
    # Seeding before each model makes its initial weights depend on the seed
    # only, not on which models were trained before it.
    torch.manual_seed(settings.seed)
    model = Forecaster(
        ModelConfig(
            cell=name,
            input_size=scaled.shape[1],
            horizon=settings.horizon,
            strategy=settings.strategy,
            hidden_size=settings.hidden_size,
            num_layers=settings.num_layers,
            dropout=settings.dropout,
            recurrent_dropout=settings.recurrent_dropout,
            zoneout=settings.zoneout,
            weight_dropout=settings.weight_dropout,
        )
    )
    if run_state is None:
        outcome = fit(
            model,
            windows["train"],
            windows["val"],
            settings.train_config(),
            progress=progress,
            name=name,
        )
        return model, outcome

    finished = run_state.finished_model(name)
    if finished is not None:
        model.load_state_dict(finished["state_dict"])
        model.eval()
        return model, TrainResult(**finished["outcome"])
    outcome = fit(
        model,
        windows["train"],
        windows["val"],
        settings.train_config(),
        progress=progress,
        name=name,
        save_state=lambda state: run_state.save_training(name, state),
        resume_from=run_state.training_state(name),
    )
    run_state.save_finished(name, model.state_dict(), asdict(outcome))
    return model, outcome


def forecast_test(
    model: Forecaster,
    prepared: PreparedData,
    origins: np.ndarray,
    settings: CompareSettings,
) -> np.ndarray:
    """Forecast the test part from each origin; return one value per test row."""
    scaled, total = prepared.scaled, prepared.split.total
    contexts = np.stack([scaled[o - settings.context : o] for o in origins])
    model.eval()
    with torch.no_grad():
        scaled_forecast = model.forecast(
            torch.from_numpy(contexts.astype(np.float32)), settings.horizon
        )
    values = prepared.scaler.inverse_target(scaled_forecast.numpy().astype(np.float64))
    parts = [
        values[i, : min(settings.horizon, total - o)] for i, o in enumerate(origins)
    ]
    return np.concatenate(parts)


def run_baselines(
    y: np.ndarray,
    split: Split,
    origins: np.ndarray,
    horizon: int,
    season: int,
    truth: np.ndarray,
) -> list[ModelResult]:
    """Forecast the test part with naive, seasonal naive and ETS and score them."""
    training = y[: split.train_end]
    rows = []
    for name, description, function in (
        ("naive", "last value", baselines.naive),
        (
            "seasonal_naive",
            f"value one season ({season}) back",
            lambda *args: baselines.seasonal_naive(*args, season=season),
        ),
    ):
        started = time.perf_counter()
        forecast = function(y, origins, horizon, split.total)
        rows.append(
            ModelResult(
                name=name,
                kind="baseline",
                description=description,
                parameters=0,
                seconds=time.perf_counter() - started,
                epochs=None,
                best_epoch=None,
                metrics=score(truth, forecast, training, season),
                forecast=forecast,
            )
        )

    # ETS has no use for a validation part, so it is fitted on training and
    # validation together: everything before the test part.
    fitted = baselines.ets(y, split.val_end, origins, horizon, split.total, season)
    if fitted is not None:
        rows.append(
            ModelResult(
                name="ets",
                kind="baseline",
                description=fitted.description,
                parameters=fitted.parameters,
                seconds=fitted.seconds,
                epochs=None,
                best_epoch=None,
                metrics=score(truth, fitted.forecast, training, season),
                forecast=fitted.forecast,
            )
        )
    return rows


def data_record(series: Series, settings: CompareSettings) -> dict:
    """Describe how the series was read, so that it can be read again the same way."""
    source = series.source
    if settings.data is not None:
        source = str(Path(settings.data).resolve())
    return {
        "source": source,
        "columns": list(series.columns),
        "date_column": series.date_column,
        "fill": settings.fill,
        "season": series.season,
        "frequency": series.frequency,
        "context": settings.context,
        "horizon": settings.horizon,
        "rows": len(series),
    }


def best_by_metric(results: list[ModelResult]) -> dict[str, str]:
    """Return the name of the result with the lowest value of each metric."""
    best = {}
    for metric in results[0].metrics:
        values = [(r.metrics[metric], r.name) for r in results]
        finite = [(value, name) for value, name in values if np.isfinite(value)]
        if finite:
            best[metric] = min(finite)[1]
    return best


def test_part_dates(result: CompareResult) -> pd.DatetimeIndex | None:
    dates = result.prepared.series.dates
    return None if dates is None else dates[result.prepared.split.val_end :]
