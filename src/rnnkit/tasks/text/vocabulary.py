"""Read a text corpus and map its symbols (characters or bytes) to integer ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

CHARACTERS = "characters"
BYTES = "bytes"


def read_corpus(path: str | Path, byte_level: bool = False) -> str | bytes:
    """Read a training text as UTF-8 ``str``, or as raw ``bytes`` with ``byte_level``.

    Raises ``ValueError`` for an empty file or, without ``byte_level``, for a
    file that is not valid UTF-8, and ``OSError`` for a file that cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"expected a text file, got the directory {path}")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"{path} is empty; expected a text file with some content")
    if byte_level:
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not valid UTF-8 (invalid byte {raw[error.start]:#04x} at "
            f"offset {error.start}); convert it to UTF-8, or pass --bytes to model "
            "it byte by byte"
        ) from None


@dataclass(frozen=True)
class Vocabulary:
    """The symbols a language model reads and writes, in id order.

    ``kind`` is ``"characters"`` (symbols are one-character strings, those seen
    in the training text) or ``"bytes"`` (all 256 byte values, so that any
    input encodes).
    """

    kind: str
    symbols: tuple

    @classmethod
    def from_corpus(cls, corpus: str | bytes) -> Vocabulary:
        """Build the vocabulary of a corpus read by ``read_corpus``."""
        if isinstance(corpus, bytes):
            return cls(BYTES, tuple(range(256)))
        return cls(CHARACTERS, tuple(sorted(set(corpus))))

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Rebuild a vocabulary stored by ``to_dict``."""
        kind = data.get("kind")
        symbols = data.get("symbols")
        if kind not in (CHARACTERS, BYTES) or not isinstance(symbols, list):
            raise ValueError(
                "invalid vocabulary in checkpoint: expected kind 'characters' or "
                f"'bytes' and a list of symbols, got kind {kind!r}"
            )
        return cls(kind, tuple(symbols))

    def to_dict(self) -> dict:
        """Return the vocabulary as plain data for a checkpoint."""
        return {"kind": self.kind, "symbols": list(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def index(self) -> dict:
        """The id of each symbol."""
        return {symbol: i for i, symbol in enumerate(self.symbols)}

    def encode(self, text: str | bytes) -> Tensor:
        """Return the ids of ``text`` as an int64 tensor (T,).

        A string given to a byte vocabulary is encoded as UTF-8 first. Raises
        ``ValueError`` naming the characters that are not in a character
        vocabulary.
        """
        if self.kind == BYTES:
            data = text.encode("utf-8") if isinstance(text, str) else text
            return torch.tensor(list(data), dtype=torch.int64)
        if isinstance(text, bytes):
            raise TypeError(
                "expected str for a character vocabulary, got bytes; decode it first"
            )
        index = self.index
        unknown = sorted({char for char in text if char not in index})
        if unknown:
            shown = ", ".join(repr(char) for char in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"characters not in the model's vocabulary: {shown}{more}; the "
                f"model knows {len(self.symbols)} characters, those of its "
                "training text"
            )
        return torch.tensor([index[char] for char in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        """Return the text of a sequence of ids.

        Bytes that do not form valid UTF-8 become U+FFFD, because a byte model
        can sample any byte sequence.
        """
        ids = [int(i) for i in ids]
        if self.kind == BYTES:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.symbols[i] for i in ids)
