"""Read a time series from a CSV file or the built-in data set and check it.

Every check raises ``ValueError`` with a message that names the column, the
lines of the file and what to do, so that the command line can show it as is.
Line numbers count the header as line 1, as a text editor does.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "builtin:sunspots"
FILL_METHODS = ("ffill", "interpolate")

# Season length per sampling interval, used for seasonal naive and MASE.
# Daily data gets 7 (the weekly cycle) instead of 365: a yearly season needs
# several years of training data before seasonal naive or a seasonal ETS model
# can use it, and a 365-state ETS fit is slow. Pass --season 365 to override.
SEASON_BY_FREQUENCY = {
    "hourly": 24,
    "daily": 7,
    "weekly": 52,
    "monthly": 12,
    "quarterly": 4,
    "yearly": 1,
}


@dataclass
class Series:
    """A checked multivariate series; the forecast target is column 0.

    ``values`` has shape (T, F): T time steps, F columns, float64, all finite.
    """

    values: np.ndarray
    columns: list[str]
    dates: pd.DatetimeIndex | None
    source: str
    date_column: str | None
    frequency: str | None
    season: int

    @property
    def target(self) -> np.ndarray:
        return self.values[:, 0]

    def __len__(self) -> int:
        return len(self.values)


def load_series(
    path: str | Path | None = None,
    columns: list[str] | None = None,
    date_column: str | None = None,
    fill: str | None = None,
    season: int | None = None,
) -> Series:
    """Load and check a series from ``path``, or the built-in one if it is None.

    ``columns`` lists the value columns, target first. Without it, a file must
    have exactly one column besides the date column. The date column is
    ``date_column`` or, if that is None, the first column when it contains dates.
    ``fill`` repairs missing values ("ffill" or "interpolate"); without it a
    missing value is an error. ``season`` overrides the season length that is
    otherwise inferred from the spacing of the dates.
    """
    if fill is not None and fill not in FILL_METHODS:
        raise ValueError(
            f"invalid fill method {fill!r}: expected one of {FILL_METHODS}"
        )
    if season is not None and season < 1:
        raise ValueError(f"invalid season length {season}: expected an integer >= 1")

    if path is None:
        frame, source = _read_builtin(), BUILTIN_SOURCE
        if date_column is None:
            date_column = "year"
    else:
        frame, source = _read_csv(Path(path)), str(path)
    date_column = _choose_date_column(frame, columns, date_column)
    columns = _choose_value_columns(frame, columns, date_column)

    values = _parse_values(frame, columns)
    dates = _parse_dates(frame[date_column]) if date_column is not None else None
    values, dates = _handle_missing(values, dates, columns, fill)

    frequency = infer_frequency(dates) if dates is not None else None
    if season is None:
        season = SEASON_BY_FREQUENCY.get(frequency, 1)
    return Series(
        values=values.to_numpy(dtype=np.float64),
        columns=columns,
        dates=dates,
        source=source,
        date_column=date_column,
        frequency=frequency,
        season=season,
    )


def _read_builtin() -> pd.DataFrame:
    # Yearly sunspot numbers 1700-2008, shipped inside statsmodels as a CSV
    # file, so reading them needs no network.
    from statsmodels.datasets import sunspots

    raw = sunspots.load_pandas().data
    years = raw["YEAR"].astype(int).astype(str)
    values = raw["SUNACTIVITY"].astype(str)
    return pd.DataFrame({"year": years, "sunactivity": values})


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ValueError(f"data file not found: {path}")
    if not path.is_file():
        raise ValueError(f"data path is not a file: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"data file {path} is empty: expected a CSV file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        # pandas' parser messages can end in a newline, so the message is
        # folded into one line.
        detail = " ".join(str(error).split())
        raise ValueError(f"could not parse {path} as CSV: {detail}") from None
    if frame.empty:
        raise ValueError(f"data file {path} has a header but no rows")
    return frame


def _choose_date_column(
    frame: pd.DataFrame, columns: list[str] | None, date_column: str | None
) -> str | None:
    if date_column is not None:
        _check_columns_exist(frame, [date_column], "date column")
        return date_column

    first = frame.columns[0]
    if columns and first in columns:
        return None
    return first if _looks_like_dates(frame[first]) else None


def _looks_like_dates(column: pd.Series) -> bool:
    """Return whether a column is not all numbers and most of it parses as dates.

    Most, not all, so that a few malformed dates are reported instead of the
    column being ignored.
    """
    text = column.dropna()
    if text.empty or pd.to_numeric(text, errors="coerce").notna().all():
        return False
    return bool(_to_datetime(text).notna().mean() >= 0.5)


def _date_column_hint(frame: pd.DataFrame, names: list[str]) -> str:
    """Return advice to name a column of ``names`` that looks like dates, or ''."""
    for name in names:
        if _looks_like_dates(frame[name]):
            return (
                f"column {name!r} looks like dates: name it with --date-column "
                f"{name} to use them"
            )
    return ""


def _choose_value_columns(
    frame: pd.DataFrame, columns: list[str] | None, date_column: str | None
) -> list[str]:
    if columns:
        _check_columns_exist(frame, columns, "column")
        duplicated = sorted({name for name in columns if columns.count(name) > 1})
        if duplicated:
            raise ValueError(f"column {duplicated[0]!r} is given more than once")
        if date_column in columns:
            raise ValueError(
                f"column {date_column!r} is the date column and cannot also be a "
                "value column"
            )
        if date_column is None:
            unused = [name for name in frame.columns if name not in columns]
            hint = _date_column_hint(frame, unused)
            if hint:
                logger.warning("the rows are used without dates, but %s", hint)
        return list(columns)

    candidates = [name for name in frame.columns if name != date_column]
    if len(candidates) != 1:
        hint = _date_column_hint(frame, candidates) if date_column is None else ""
        raise ValueError(
            f"the data has {len(candidates)} value columns ({_join(candidates)}); "
            "choose one or more with --column, the target first"
            + (f"; {hint}" if hint else "")
        )
    return candidates


def _check_columns_exist(frame: pd.DataFrame, names: list[str], kind: str) -> None:
    for name in names:
        if name not in frame.columns:
            raise ValueError(
                f"{kind} {name!r} not found; the data has columns "
                f"{_join(list(frame.columns))}"
            )


def _parse_values(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    values = {}
    for name in columns:
        text = frame[name]
        numbers = pd.to_numeric(text, errors="coerce")
        invalid = text.notna() & ~np.isfinite(numbers.fillna(0.0))
        invalid |= text.notna() & numbers.isna()
        if invalid.any():
            examples = ", ".join(
                f"{value!r} on line {_line(row)}"
                for row, value in text[invalid].head(3).items()
            )
            count = int(invalid.sum())
            description = (
                "value that is not a finite number"
                if count == 1
                else "values that are not finite numbers"
            )
            raise ValueError(f"column {name!r} has {count} {description} ({examples})")
        values[name] = numbers.astype(np.float64)
    return pd.DataFrame(values)


def _parse_dates(text: pd.Series) -> pd.DatetimeIndex:
    name = text.name
    missing = text.isna()
    if missing.any():
        raise ValueError(
            f"date column {name!r} has {int(missing.sum())} missing dates "
            f"(lines {_lines(missing)})"
        )
    dates = _to_datetime(text)
    invalid = dates.isna()
    if invalid.any():
        examples = ", ".join(
            f"{value!r} on line {_line(row)}"
            for row, value in text[invalid].head(3).items()
        )
        count = int(invalid.sum())
        description = (
            "value that is not a date" if count == 1 else "values that are not dates"
        )
        raise ValueError(f"date column {name!r} has {count} {description} ({examples})")

    duplicated = dates.duplicated(keep=False)
    if duplicated.any():
        first = dates[duplicated].iloc[0]
        rows = dates.index[dates == first]
        raise ValueError(
            f"date column {name!r} has duplicated dates: {first.date()} appears on "
            f"lines {', '.join(str(_line(row)) for row in rows)}; expected one row "
            "per date"
        )
    steps_back = dates.diff() < pd.Timedelta(0)
    if steps_back.any():
        row = int(np.flatnonzero(steps_back.to_numpy())[0])
        raise ValueError(
            f"date column {name!r} is not sorted: {dates.iloc[row]} on line "
            f"{_line(row)} comes before {dates.iloc[row - 1]} on line "
            f"{_line(row - 1)}; sort the rows by date"
        )
    return pd.DatetimeIndex(dates)


def _to_datetime(text: pd.Series) -> pd.Series:
    """Parse dates month first (pandas' default for 01/02/2022), or day first
    when that parses more of them, as with 13/01/2022 in a dd/mm/yyyy column.

    A column whose days are all 12 or less parses both ways, and is read
    month first.
    """
    # pandas warns when it cannot infer one format for the whole column, and
    # then parses each value on its own. Values that still fail become NaT,
    # which the caller reports, so the warning adds nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(text, errors="coerce")
        if parsed.isna().sum() > text.isna().sum():
            day_first = pd.to_datetime(text, errors="coerce", dayfirst=True)
            if day_first.notna().sum() > parsed.notna().sum():
                return day_first
        return parsed


def _handle_missing(
    values: pd.DataFrame,
    dates: pd.DatetimeIndex | None,
    columns: list[str],
    fill: str | None,
) -> tuple[pd.DataFrame, pd.DatetimeIndex | None]:
    missing = values.isna()
    if not missing.any().any():
        return values, dates
    if fill is None:
        name = missing.any().idxmax()
        count = int(missing[name].sum())
        raise ValueError(
            f"column {name!r} has {count} missing "
            f"{'value' if count == 1 else 'values'} (lines "
            f"{_lines(missing[name])}); fill them with --fill ffill or "
            "--fill interpolate, or remove those rows"
        )

    if fill == "ffill":
        values = values.ffill()
    else:
        values = values.interpolate(method="linear", limit_direction="forward")
    # Neither method can fill values before the first observation of a column,
    # so the leading rows that are still missing are dropped.
    complete = values.notna().all(axis=1).to_numpy()
    if not complete.any():
        raise ValueError(f"every row has a missing value in {_join(columns)}")
    first = int(np.argmax(complete))
    if first > 0:
        logger.warning(
            "dropped the first %d rows: they have missing values with no earlier "
            "value to fill from",
            first,
        )
    values = values.iloc[first:].reset_index(drop=True)
    if dates is not None:
        dates = dates[first:]
    return values, dates


def infer_frequency(dates: pd.DatetimeIndex) -> str | None:
    """Name the sampling interval of ``dates`` from the median gap between them.

    Returns "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", or
    None when the median gap matches none of them.
    """
    if len(dates) < 2:
        return None
    days = _median_gap(dates) / pd.Timedelta(days=1)
    ranges = [
        ("hourly", 0.9 / 24, 1.1 / 24),
        ("daily", 0.9, 1.1),
        ("weekly", 6.5, 7.5),
        ("monthly", 27.5, 31.5),
        ("quarterly", 88.5, 92.5),
        ("yearly", 364.5, 366.5),
    ]
    for name, low, high in ranges:
        if low <= days <= high:
            return name
    return None


def future_dates(dates: pd.DatetimeIndex, frequency: str | None, count: int) -> list:
    """Extend ``dates`` by ``count`` steps of its sampling interval."""
    last = dates[-1]
    if frequency in ("monthly", "quarterly", "yearly"):
        months = {"monthly": 1, "quarterly": 3, "yearly": 12}[frequency]
        return [last + pd.DateOffset(months=months * k) for k in range(1, count + 1)]
    step = _median_gap(dates)
    return [last + step * k for k in range(1, count + 1)]


def _median_gap(dates: pd.DatetimeIndex) -> pd.Timedelta:
    gaps = np.diff(dates.to_numpy()).astype("timedelta64[s]").astype(np.int64)
    return pd.Timedelta(seconds=float(np.median(gaps)))


def _line(row: int) -> int:
    return int(row) + 2


def _lines(mask: pd.Series, limit: int = 5) -> str:
    rows = np.flatnonzero(mask.to_numpy())
    shown = ", ".join(str(_line(row)) for row in rows[:limit])
    if len(rows) > limit:
        shown += f" and {len(rows) - limit} more"
    return shown


def _join(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)
