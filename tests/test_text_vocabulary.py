"""Reading a corpus and mapping characters or bytes to ids."""

from pathlib import Path

import pytest
import torch

from rnnkit.tasks.text.vocabulary import BYTES, CHARACTERS, Vocabulary, read_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"


def test_read_corpus_decodes_utf8():
    text = read_corpus(SHAKESPEARE)
    assert isinstance(text, str)
    assert text == SHAKESPEARE.read_bytes().decode("utf-8")


def test_read_corpus_bytes_returns_raw_bytes():
    assert read_corpus(SHAKESPEARE, byte_level=True) == SHAKESPEARE.read_bytes()


def test_read_corpus_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        read_corpus(path)
    with pytest.raises(ValueError, match="is empty"):
        read_corpus(path, byte_level=True)


def test_read_corpus_rejects_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8.*0xe9.*offset 3.*--bytes"):
        read_corpus(path)


def test_read_corpus_bytes_accepts_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    raw = "caf\u00e9".encode("latin-1")
    path.write_bytes(raw)
    assert read_corpus(path, byte_level=True) == raw


def test_read_corpus_missing_file_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "absent.txt")


def test_character_vocabulary_round_trip():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:5000]
    vocabulary = Vocabulary.from_corpus(text)
    assert vocabulary.kind == CHARACTERS
    assert list(vocabulary.symbols) == sorted(set(text))
    ids = vocabulary.encode(text)
    assert ids.dtype == torch.int64
    assert ids.shape == (len(text),)
    assert vocabulary.decode(ids) == text


def test_character_vocabulary_ids_follow_symbol_order():
    vocabulary = Vocabulary.from_corpus("banana")
    assert vocabulary.symbols == ("a", "b", "n")
    assert vocabulary.encode("nab").tolist() == [2, 0, 1]


def test_character_vocabulary_rejects_unknown_characters():
    vocabulary = Vocabulary.from_corpus("abc")
    with pytest.raises(ValueError, match=r"not in the model's vocabulary: 'X', 'Z'"):
        vocabulary.encode("aXbZ")


def test_byte_vocabulary_encodes_any_text_as_utf8():
    vocabulary = Vocabulary.from_corpus(b"plain ascii")
    assert vocabulary.kind == BYTES
    assert len(vocabulary) == 256
    text = "na\u00efve \u2713"
    assert vocabulary.encode(text).tolist() == list(text.encode("utf-8"))
    assert vocabulary.decode(vocabulary.encode(text)) == text


def test_byte_vocabulary_decodes_invalid_utf8_with_replacement():
    vocabulary = Vocabulary.from_corpus(b"x")
    assert vocabulary.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


def test_vocabulary_dict_round_trip():
    for corpus in ("hello world", b"hello"):
        vocabulary = Vocabulary.from_corpus(corpus)
        assert Vocabulary.from_dict(vocabulary.to_dict()) == vocabulary


def test_vocabulary_from_dict_rejects_unknown_kind():
    with pytest.raises(ValueError, match="invalid vocabulary"):
        Vocabulary.from_dict({"kind": "words", "symbols": ["a"]})
