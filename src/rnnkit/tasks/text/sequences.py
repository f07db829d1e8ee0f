"""Read labelled sequences for classification from CSV, JSON Lines or the built-in set.

A sequence is either text, read character by character, or numbers. In a CSV
cell, numbers are separated by commas or spaces, and each number is one step.
A cell with semicolons has one step of several features per semicolon-separated
group, so ``"1 2; 3 4; 5 6"`` is 3 steps of 2 features. In JSON Lines, a
sequence of numbers is a list of numbers (one feature per step) or a list of
lists (several features per step), and a string is read as in a CSV cell.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT = "text"
NUMBERS = "numbers"
SEQUENCE_KINDS = ("auto", TEXT, NUMBERS)

NUMBER_SEPARATOR = re.compile(r"[,\s]+")


@dataclass
class SequenceData:
    """Sequences, their labels and where they came from.

    ``sequences`` contains strings (kind ``"text"``) or float arrays (T, F) (kind
    ``"numbers"``). ``labels`` is None when the source has no label column
    and none was required. ``rows`` gives each sequence's row number in the
    source (1-based data rows), for messages and predictions.
    ``columns`` names the sequence and label columns of a file source, and
    is None for the built-in data.
    """

    sequences: list
    labels: list[str] | None
    kind: str
    source: str
    rows: list[int]
    columns: dict[str, str] | None = None


def load_builtin_digits() -> SequenceData:
    """Return scikit-learn's handwritten digits as sequences of 8 steps of 8 features.

    Each 8x8 image (1,797 of them, pixel values 0 to 16) is read row by row,
    top to bottom; the label is the digit. The data ships with scikit-learn,
    so nothing is downloaded.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32)
    return SequenceData(
        sequences=list(images),
        labels=[str(int(target)) for target in digits.target],
        kind=NUMBERS,
        source="scikit-learn handwritten digits (load_digits)",
        rows=list(range(1, len(images) + 1)),
    )


def read_sequences(
    path: str | Path,
    sequence_column: str = "sequence",
    label_column: str = "label",
    require_labels: bool = True,
    kind: str = "auto",
) -> SequenceData:
    """Read a .csv or .jsonl file of sequences and labels.

    ``kind`` is ``"text"``, ``"numbers"`` or ``"auto"``, which picks numbers
    when every sequence parses as numbers. Without ``require_labels``, a
    missing label column gives ``labels=None``, but a column that is present
    must have a label on every row. Raises ``ValueError`` naming the row and
    column of the first problem, and ``OSError`` for a file that cannot be read.
    """
    if kind not in SEQUENCE_KINDS:
        raise ValueError(f"expected a sequence kind in {SEQUENCE_KINDS}, got {kind!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        records = _read_jsonl(path)
    else:
        raise ValueError(
            f"expected a .csv or .jsonl file of sequences, got {path.name!r}"
        )
    if not records:
        raise ValueError(f"{path} has no data rows; expected at least one sequence")

    columns = sorted({key for _, record in records for key in record})
    if not any(sequence_column in record for _, record in records):
        raise ValueError(
            f"{path} has no sequence column {sequence_column!r}; its columns are "
            f"{columns}; choose one with --sequence-column"
        )
    has_labels = any(label_column in record for _, record in records)
    if require_labels and not has_labels:
        raise ValueError(
            f"{path} has no label column {label_column!r}; its columns are "
            f"{columns}; choose one with --label-column"
        )

    raw_sequences = []
    labels = [] if has_labels else None
    rows = []
    for row, record in records:
        value = record.get(sequence_column)
        if _is_missing(value):
            raise ValueError(
                f"{path}: row {row} has no sequence in column {sequence_column!r}"
            )
        raw_sequences.append(value)
        rows.append(row)
        if has_labels:
            label = record.get(label_column)
            if _is_missing(label):
                raise ValueError(
                    f"{path}: row {row} has no label in column {label_column!r}; "
                    "every row needs one"
                )
            labels.append(_label_text(label))

    kind = _choose_kind(raw_sequences, kind)
    sequences = []
    for row, value in zip(rows, raw_sequences, strict=True):
        where = f"{path}: row {row}, column {sequence_column!r}"
        if kind == TEXT:
            if not isinstance(value, str):
                raise ValueError(f"{where}: expected text, got {type(value).__name__}")
            sequences.append(value)
        else:
            sequences.append(parse_numbers(value, where))
    _check_feature_counts(sequences, rows, kind, path)
    columns = {"sequence": sequence_column, "label": label_column}
    return SequenceData(sequences, labels, kind, str(path), rows, columns)


def parse_numbers(value, where: str) -> np.ndarray:
    """Return a sequence of numbers as a float32 array (T, F); see the module doc."""
    if isinstance(value, str):
        if ";" in value:
            steps = [_parse_step(part, where) for part in value.split(";")]
        else:
            steps = [[number] for number in _parse_step(value, where)]
    elif isinstance(value, list):
        steps = [
            [_check_number(x, where) for x in item]
            if isinstance(item, list)
            else [_check_number(item, where)]
            for item in value
        ]
    else:
        raise ValueError(
            f"{where}: expected a sequence of numbers, got {type(value).__name__}"
        )
    if not steps or not steps[0]:
        raise ValueError(f"{where}: empty sequence; expected at least one step")
    widths = {len(step) for step in steps}
    if len(widths) > 1:
        raise ValueError(
            f"{where}: steps have different numbers of features {sorted(widths)}; "
            "every step needs the same count"
        )
    return np.asarray(steps, dtype=np.float32)


def _parse_step(text: str, where: str) -> list[float]:
    tokens = [token for token in NUMBER_SEPARATOR.split(text.strip()) if token]
    if not tokens:
        raise ValueError(f"{where}: empty step in {text!r}; expected numbers")
    return [_check_number(token, where) for token in tokens]


def _check_number(value, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    return number


def _choose_kind(values: list, kind: str) -> str:
    if kind != "auto":
        return kind
    for value in values:
        if isinstance(value, list):
            continue
        if not isinstance(value, str):
            return TEXT
        tokens = [t for t in re.split(r"[,;\s]+", value.strip()) if t]
        try:
            if not tokens or not all(math.isfinite(float(t)) for t in tokens):
                return TEXT
        except ValueError:
            return TEXT
    return NUMBERS


def _check_feature_counts(sequences: list, rows: list[int], kind: str, path) -> None:
    if kind == TEXT:
        return
    first = sequences[0].shape[1]
    for row, array in zip(rows, sequences, strict=True):
        if array.shape[1] != first:
            raise ValueError(
                f"{path}: row {row} has {_count_features(array.shape[1])} per step, "
                f"but row {rows[0]} has {first}; every sequence needs the same count"
            )


def _count_features(count: int) -> str:
    return f"{count} number" if count == 1 else f"{count} numbers"


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return False


def _label_text(label) -> str:
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label).strip()


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as file:
        try:
            reader = csv.DictReader(file)
            return [
                (row, {key: value for key, value in record.items() if key is not None})
                for row, record in enumerate(reader, start=1)
            ]
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path} is not valid UTF-8 (invalid byte at offset {error.start}); "
                "convert it to UTF-8"
            ) from None
        except csv.Error as error:
            raise ValueError(f"{path} is not a valid CSV file: {error}") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not valid UTF-8 (invalid byte at offset {error.start}); "
            "convert it to UTF-8"
        ) from None
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: line {line_number} is not valid JSON: {error.msg}"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}: line {line_number} is not a JSON object; expected one "
                f"object per line, got {type(record).__name__}"
            )
        records.append((len(records) + 1, record))
    return records
