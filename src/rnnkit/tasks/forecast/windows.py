"""Split a series in time, scale it, and cut it into (context, target) windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("direct", "recursive")


@dataclass(frozen=True)
class Split:
    """Chronological split of T rows: train [0, train_end), validation
    [train_end, val_end), test [val_end, total)."""

    train_end: int
    val_end: int
    total: int

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.train_end, self.val_end - self.train_end, self.total - self.val_end


def split_series(
    total: int,
    context: int,
    horizon: int,
    val_fraction: float,
    test_fraction: float,
    season: int = 1,
) -> Split:
    """Split ``total`` rows in time and check each part is long enough.

    The training part must contain at least one full window (context + horizon
    rows) and one more row than the season, so that the seasonal naive error
    that scales MASE exists. Validation and test need a full horizon each.
    """
    for name, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"invalid {name} fraction {fraction}: expected a number between 0 and 1"
            )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"validation fraction {val_fraction} and test fraction {test_fraction} "
            "leave no rows for training: their sum must be below 1"
        )

    n_test = int(round(total * test_fraction))
    n_val = int(round(total * val_fraction))
    n_train = total - n_val - n_test
    need_train = max(context + horizon, season + 1)
    if n_train < need_train or n_val < horizon or n_test < horizon:
        if season + 1 > context + horizon:
            cause = f"season length {season} needs at least {need_train}"
            fix = "a smaller --season"
        else:
            cause = (
                f"context {context} and horizon {horizon} need at least {need_train}"
            )
            fix = "a smaller --context or --horizon"
        raise ValueError(
            f"series too short: {total} rows split into {n_train} training, "
            f"{n_val} validation and {n_test} test rows, but {cause} training rows "
            f"and horizon {horizon} needs {horizon} rows each for validation and "
            f"test; use {fix}, or a longer series"
        )
    return Split(train_end=n_train, val_end=n_train + n_val, total=total)


@dataclass
class Scaler:
    """Per-column standardisation: scaled = (value - mean) / scale."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, columns: list[str]) -> Scaler:
        """Fit on ``values`` (T, F), which must be the training part only."""
        mean = values.mean(axis=0)
        scale = values.std(axis=0)
        for index, name in enumerate(columns):
            if scale[index] == 0.0:
                raise ValueError(
                    f"column {name!r} is constant over the training part (every "
                    f"value is {values[0, index]:g}); a constant series cannot be "
                    "scaled or forecast"
                )
        return cls(mean=mean, scale=scale)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.scale

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        """Undo the scaling of column 0, the target, for any array shape."""
        return scaled * self.scale[0] + self.mean[0]

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> Scaler:
        return cls(
            mean=np.asarray(state["mean"], dtype=np.float64),
            scale=np.asarray(state["scale"], dtype=np.float64),
        )


def make_windows(
    scaled: np.ndarray,
    start: int,
    end: int,
    context: int,
    horizon: int,
    strategy: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the windows whose targets lie in rows [start, end) of ``scaled`` (T, F).

    A window's context may reach back before ``start``, which lets validation
    and test windows take their context from the preceding part. Returns
    inputs (N, context, F) and targets. For "direct" the targets are the target
    column over the horizon, (N, horizon). For "recursive" they are every
    column one step ahead, (N, F).
    """
    steps = horizon if strategy == "direct" else 1
    origins = np.arange(max(start, context), end - steps + 1)
    inputs = np.stack([scaled[t - context : t] for t in origins])
    if strategy == "direct":
        targets = np.stack([scaled[t : t + horizon, 0] for t in origins])
    else:
        targets = scaled[origins]
    return inputs.astype(np.float32), targets.astype(np.float32)


def forecast_origins(split: Split, horizon: int) -> np.ndarray:
    """Return the forecast origins that tile the test part in blocks of
    ``horizon`` rows; the last block may be shorter."""
    return np.arange(split.val_end, split.total, horizon)
