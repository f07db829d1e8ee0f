"""Reading labelled sequences from CSV, JSON Lines and the built-in digits."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from rnnkit.tasks.text.sequences import (
    NUMBERS,
    TEXT,
    load_builtin_digits,
    parse_numbers,
    read_sequences,
)


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_digits_are_rows_of_pixels():
    data = load_builtin_digits()
    digits = load_digits()
    assert data.kind == NUMBERS
    assert len(data.sequences) == 1797
    assert data.sequences[5].shape == (8, 8)
    np.testing.assert_array_equal(data.sequences[5], digits.data[5].reshape(8, 8))
    assert data.labels[5] == str(digits.target[5])


def test_csv_text_sequences(tmp_path):
    path = write_csv(tmp_path / "d.csv", 'sequence,label\nhello there,a\n"x, y",b\n')
    data = read_sequences(path)
    assert data.kind == TEXT
    assert data.sequences == ["hello there", "x, y"]
    assert data.labels == ["a", "b"]
    assert data.rows == [1, 2]


def test_csv_numbers_one_feature_per_step(tmp_path):
    path = write_csv(tmp_path / "d.csv", 'sequence,label\n"1, 2,3",up\n4 5,down\n')
    data = read_sequences(path)
    assert data.kind == NUMBERS
    np.testing.assert_array_equal(data.sequences[0], [[1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(data.sequences[1], [[4.0], [5.0]])


def test_csv_numbers_several_features_per_step(tmp_path):
    path = write_csv(tmp_path / "d.csv", 'sequence,label\n"1 2; 3 4; 5 6",x\n"7,8",y\n')
    with pytest.raises(
        ValueError, match="row 2 has 1 number per step, but row 1 has 2"
    ):
        read_sequences(path)
    path = write_csv(tmp_path / "d.csv", 'sequence,label\n"1 2; 3 4; 5 6",x\n7 8;,y\n')
    with pytest.raises(ValueError, match="empty step"):
        read_sequences(path)
    path = write_csv(tmp_path / "d.csv", 'sequence,label\n"1 2; 3 4; 5 6",x\n7 8,y\n')
    with pytest.raises(ValueError, match="row 2 has 1 number per step"):
        read_sequences(path)
    path = write_csv(
        tmp_path / "d.csv", 'sequence,label\n"1 2; 3 4; 5 6",x\n7 8;9 10,y\n'
    )
    data = read_sequences(path)
    np.testing.assert_array_equal(data.sequences[0], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(data.sequences[1], [[7, 8], [9, 10]])


def test_sequence_kind_can_be_forced(tmp_path):
    path = write_csv(tmp_path / "d.csv", "sequence,label\n1 2,a\n3 4,b\n")
    data = read_sequences(path, kind="text")
    assert data.kind == TEXT
    assert data.sequences == ["1 2", "3 4"]
    path = write_csv(tmp_path / "d.csv", "sequence,label\n1 2,a\n3 x,b\n")
    with pytest.raises(
        ValueError, match=r"row 2, column 'sequence': 'x' is not a number"
    ):
        read_sequences(path, kind="numbers")


def test_jsonl_lists_and_strings(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        {"sequence": [1, 2, 3], "label": 1},
        {"sequence": [[1, 2], [3, 4]], "label": 2},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    with pytest.raises(
        ValueError, match="row 2 has 2 numbers per step, but row 1 has 1"
    ):
        read_sequences(path)
    lines[1]["sequence"] = [4, 5]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    data = read_sequences(path)
    assert data.kind == NUMBERS
    assert data.labels == ["1", "2"]
    np.testing.assert_array_equal(data.sequences[1], [[4.0], [5.0]])

    path.write_text(json.dumps({"sequence": "some text", "label": "x"}))
    assert read_sequences(path).sequences == ["some text"]


def test_jsonl_invalid_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"sequence": "a", "label": 1}\n{not json}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_sequences(path)
    path.write_text('{"sequence": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_sequences(path)


def test_missing_label_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", "sequence,label\nabc,x\nabd,\nabe,y\n")
    with pytest.raises(ValueError, match="row 2 has no label in column 'label'"):
        read_sequences(path)
    path = tmp_path / "d.jsonl"
    path.write_text('{"sequence": "a", "label": 1}\n{"sequence": "b", "label": null}\n')
    with pytest.raises(ValueError, match="row 2 has no label"):
        read_sequences(path)
    path.write_text('{"sequence": "a", "label": 1}\n{"sequence": "b"}\n')
    with pytest.raises(ValueError, match="row 2 has no label"):
        read_sequences(path)


def test_missing_label_column_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", "sequence,class\nabc,x\n")
    with pytest.raises(
        ValueError, match=r"no label column 'label'.*\['class', 'sequence'\]"
    ):
        read_sequences(path)
    assert read_sequences(path, label_column="class").labels == ["x"]
    assert read_sequences(path, require_labels=False).labels is None


def test_missing_sequence_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.csv", "text,label\nabc,x\n")
    with pytest.raises(ValueError, match="no sequence column 'sequence'"):
        read_sequences(path)
    path = write_csv(tmp_path / "d.csv", "sequence,label\nabc,x\n,y\n")
    with pytest.raises(ValueError, match="row 2 has no sequence"):
        read_sequences(path)


def test_empty_file_is_rejected(tmp_path):
    for name in ("d.csv", "d.jsonl"):
        path = tmp_path / name
        path.write_text("")
        with pytest.raises(ValueError, match="no data rows"):
            read_sequences(path)
    path = write_csv(tmp_path / "header.csv", "sequence,label\n")
    with pytest.raises(ValueError, match="no data rows"):
        read_sequences(path)


def test_unknown_suffix_is_rejected(tmp_path):
    path = write_csv(tmp_path / "d.txt", "sequence,label\n")
    with pytest.raises(ValueError, match="expected a .csv or .jsonl file"):
        read_sequences(path)


def test_invalid_utf8_is_rejected(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("sequence,label\ncaf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_sequences(path)


def test_parse_numbers_rejects_bad_values():
    with pytest.raises(ValueError, match="'nan' is not a finite number"):
        parse_numbers("1 nan 2", "here")
    with pytest.raises(ValueError, match="True is not a number"):
        parse_numbers([1, True], "here")
    with pytest.raises(ValueError, match="empty sequence"):
        parse_numbers([], "here")
    with pytest.raises(ValueError, match="different numbers of features"):
        parse_numbers([[1, 2], [3]], "here")
    with pytest.raises(ValueError, match="expected a sequence of numbers, got dict"):
        parse_numbers({"a": 1}, "here")
