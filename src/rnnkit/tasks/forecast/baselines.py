"""Classical baselines, forecast from the same origins as the recurrent models.

Every function takes the full target series ``y`` and the forecast origins;
the forecast from origin o uses only y[:o] and covers rows o .. o+horizon-1,
cut at ``total``. The result is one forecast per test row.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# A seasonal ETS model has one state per season step, and fitting several
# hundred of them (daily data with a yearly season) takes minutes. Longer
# seasons get the non-seasonal ETS models only.
MAX_ETS_SEASON = 60


def _blocks(origins: np.ndarray, horizon: int, total: int):
    for origin in origins:
        yield int(origin), min(horizon, total - int(origin))


def naive(y: np.ndarray, origins: np.ndarray, horizon: int, total: int) -> np.ndarray:
    """Repeat the last observed value over the horizon."""
    parts = [
        np.full(steps, y[origin - 1])
        for origin, steps in _blocks(origins, horizon, total)
    ]
    return np.concatenate(parts)


def seasonal_naive(
    y: np.ndarray, origins: np.ndarray, horizon: int, total: int, season: int
) -> np.ndarray:
    """Repeat the last observed season.

    Step k = 1, 2, ... from origin o is y[o - m + ((k - 1) mod m)].
    """
    parts = []
    for origin, steps in _blocks(origins, horizon, total):
        k = np.arange(steps)
        parts.append(y[origin - season + k % season])
    return np.concatenate(parts)


@dataclass
class EtsFit:
    forecast: np.ndarray
    description: str
    parameters: int
    seconds: float


def ets(
    y: np.ndarray,
    fit_end: int,
    origins: np.ndarray,
    horizon: int,
    total: int,
    season: int,
) -> EtsFit | None:
    """Fit ETS models on y[:fit_end], keep the one with the lowest AIC, and
    forecast from each origin with its parameters fixed.

    The candidates are additive errors with no trend or a damped additive
    trend, times no season, an additive season, or (for positive data) a
    multiplicative season. Returns None when no candidate can be fitted.
    """
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    started = time.perf_counter()
    history = y[:fit_end]
    seasonals: list[str | None] = [None]
    if 1 < season <= MAX_ETS_SEASON and fit_end >= 2 * season + 2:
        seasonals.append("add")
        if np.all(history > 0):
            seasonals.append("mul")

    best = None
    for trend in (None, "add"):
        for seasonal in seasonals:
            spec = {
                "error": "add",
                "trend": trend,
                "damped_trend": trend is not None,
                "seasonal": seasonal,
                "seasonal_periods": season if seasonal else None,
            }
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = ETSModel(history, **spec).fit(disp=False)
            except (ValueError, np.linalg.LinAlgError) as error:
                logger.info("ETS %s could not be fitted: %s", spec, error)
                continue
            if np.isfinite(result.aic) and (best is None or result.aic < best[0]):
                best = (result.aic, spec, result.params)
    if best is None:
        logger.warning("no ETS model could be fitted; ETS is left out of the results")
        return None

    _, spec, params = best
    parts = []
    for origin, steps in _blocks(origins, horizon, total):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smoothed = ETSModel(y[:origin], **spec).smooth(params)
        parts.append(np.asarray(smoothed.forecast(steps), dtype=np.float64))
    return EtsFit(
        forecast=np.concatenate(parts),
        description=_describe(spec),
        parameters=len(params),
        seconds=time.perf_counter() - started,
    )


def _describe(spec: dict) -> str:
    trend = "Ad" if spec["trend"] else "N"
    seasonal = {None: "N", "add": "A", "mul": "M"}[spec["seasonal"]]
    return f"ETS(A,{trend},{seasonal})"
