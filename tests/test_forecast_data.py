"""Reading and checking series: load_series on good and bad CSV files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnkit.tasks.forecast.data import infer_frequency, load_series

DATA = Path(__file__).parents[2] / "shared" / "data"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_builtin_series_loads_without_network():
    series = load_series()

    assert series.columns == ["sunactivity"]
    assert len(series) == 309
    assert series.frequency == "yearly"
    assert series.season == 1
    assert series.dates[0].year == 1700
    assert np.isfinite(series.values).all()


@pytest.mark.parametrize(
    ("name", "frequency", "season", "rows"),
    [
        ("airline-passengers.csv", "monthly", 12, 144),
        ("monthly-sunspots.csv", "monthly", 12, 2820),
        ("daily-min-temperatures.csv", "daily", 7, 3650),
    ],
)
def test_shared_files_infer_season(name, frequency, season, rows):
    series = load_series(DATA / name)

    assert series.frequency == frequency
    assert series.season == season
    assert len(series) == rows


def test_season_option_overrides_inferred(tmp_path):
    series = load_series(DATA / "daily-min-temperatures.csv", season=365)

    assert series.season == 365


def test_frequency_of_weekly_and_quarterly_dates():
    weekly = pd.date_range("2000-01-02", periods=10, freq="W")
    quarterly = pd.date_range("2000-01-01", periods=10, freq="QS")

    assert infer_frequency(weekly) == "weekly"
    assert infer_frequency(quarterly) == "quarterly"


def test_file_without_dates_gets_season_one(tmp_path):
    path = write(tmp_path, "value\n1\n2\n3\n4\n")

    series = load_series(path)

    assert series.dates is None
    assert series.season == 1
    assert series.values[:, 0].tolist() == [1, 2, 3, 4]


def test_several_columns_put_target_first(tmp_path):
    path = write(tmp_path, "date,a,b\n2000-01-01,1,10\n2000-01-02,2,20\n")

    series = load_series(path, columns=["b", "a"])

    assert series.columns == ["b", "a"]
    assert series.values.tolist() == [[10, 1], [20, 2]]


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="data file not found"):
        load_series(tmp_path / "absent.csv")


def test_unknown_column_lists_columns(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n")

    with pytest.raises(ValueError, match="column 'b' not found.*'date', 'a'"):
        load_series(path, columns=["b"])


def test_several_value_columns_need_column_option(tmp_path):
    path = write(tmp_path, "date,a,b\n2000-01-01,1,2\n")

    with pytest.raises(ValueError, match="choose one or more with --column"):
        load_series(path)


def test_non_numeric_value_names_line(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n2000-01-02,abc\n")

    with pytest.raises(ValueError, match="'abc' on line 3"):
        load_series(path)


def test_infinite_value_is_rejected(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n2000-01-02,inf\n")

    with pytest.raises(
        ValueError, match=r"has 1 value that is not a finite number \('inf' on line 3\)"
    ):
        load_series(path)


def test_one_bad_date_is_singular(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n2000-01-02,2\nsoon,3\n")

    with pytest.raises(
        ValueError, match=r"has 1 value that is not a date \('soon' on line 4\)"
    ):
        load_series(path)


def test_missing_values_name_lines_and_fix(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n2000-01-02,\n2000-01-03,3\n")

    with pytest.raises(ValueError, match=r"has 1 missing value \(lines 3\).*--fill"):
        load_series(path)


def test_fill_ffill_and_interpolate(tmp_path):
    text = "date,a\n2000-01-01,\n2000-01-02,1\n2000-01-03,\n2000-01-04,3\n"
    path = write(tmp_path, text)

    carried = load_series(path, fill="ffill")
    interpolated = load_series(path, fill="interpolate")

    # The leading missing row has nothing to fill from and is dropped.
    assert carried.values[:, 0].tolist() == [1, 1, 3]
    assert interpolated.values[:, 0].tolist() == [1, 2, 3]
    assert str(carried.dates[0].date()) == "2000-01-02"


def test_unparseable_date_names_line(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\nnot a date,2\n2000-01-03,3\n")

    with pytest.raises(ValueError, match="'not a date' on line 3"):
        load_series(path)


def test_duplicated_date_names_lines(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-01,1\n2000-01-02,2\n2000-01-02,3\n")

    with pytest.raises(ValueError, match="duplicated dates.*lines 3, 4"):
        load_series(path)


def test_unsorted_dates_name_line(tmp_path):
    path = write(tmp_path, "date,a\n2000-01-02,1\n2000-01-01,2\n2000-01-03,3\n")

    with pytest.raises(ValueError, match="not sorted.*line 3"):
        load_series(path)


def test_empty_file_raises(tmp_path):
    path = write(tmp_path, "")

    with pytest.raises(ValueError, match="is empty"):
        load_series(path)


DATES_SECOND = "sales,date\n" + "".join(
    f"{100 + day},2022-01-{day:02d}\n" for day in range(1, 29)
)


def test_date_column_not_first_is_named_in_error(tmp_path):
    path = write(tmp_path, DATES_SECOND)
    with pytest.raises(ValueError) as error:
        load_series(path)
    message = str(error.value)
    assert message.startswith("the data has 2 value columns ('sales', 'date')")
    assert message.endswith(
        "column 'date' looks like dates: name it with --date-column date to use them"
    )


def test_unused_date_column_is_warned_of(tmp_path, caplog):
    path = write(tmp_path, DATES_SECOND)
    series = load_series(path, columns=["sales"])
    assert series.dates is None
    assert "column 'date' looks like dates" in caplog.text

    caplog.clear()
    series = load_series(path, columns=["sales"], date_column="date")
    assert series.frequency == "daily"
    assert caplog.text == ""


def test_numeric_second_column_gives_no_date_hint(tmp_path, caplog):
    path = write(tmp_path, "a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(30)))
    with pytest.raises(ValueError) as error:
        load_series(path)
    assert "looks like dates" not in str(error.value)
    load_series(path, columns=["a"])
    assert caplog.text == ""


def test_day_first_dates_are_read_day_first(tmp_path):
    days = pd.date_range("2022-01-01", periods=40, freq="D")
    rows = "".join(f"{day:%d/%m/%Y},{i}\n" for i, day in enumerate(days))
    series = load_series(write(tmp_path, "date,value\n" + rows))
    assert list(series.dates) == list(days)
    assert series.frequency == "daily"
    assert series.season == 7


def test_month_first_dates_stay_month_first(tmp_path):
    days = pd.date_range("2022-01-01", periods=40, freq="D")
    rows = "".join(f"{day:%m/%d/%Y},{i}\n" for i, day in enumerate(days))
    series = load_series(write(tmp_path, "date,value\n" + rows))
    assert list(series.dates) == list(days)
