"""Lay an encoded corpus out as parallel streams for truncated backpropagation.

The text is split in time, with validation at the end, and each part is laid
out as B streams side by side. Stream b is the b-th of B equal contiguous
slices of the part, so chunk k of every stream directly follows chunk k - 1.
A model that carries its state from one chunk to the next therefore reads
each stream as one long sequence.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor


def split_validation(ids: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Split ids (N,) into the first ``1 - fraction`` (training) and the rest.

    Raises ``ValueError`` when either part would hold fewer than 2 symbols,
    which is the least that gives one input and one target.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"expected a validation fraction in (0, 1), got {fraction}")
    total = ids.numel()
    validation_size = int(round(total * fraction))
    training_size = total - validation_size
    if validation_size < 2 or training_size < 2:
        raise ValueError(
            f"the text has {total} symbols, too few to split into training and "
            f"validation ({fraction:.0%}) parts of at least 2 symbols each"
        )
    return ids[:training_size], ids[training_size:]


def make_streams(ids: Tensor, batch_size: int) -> Tensor:
    """Lay ids (N,) out as B side-by-side streams, time-major (N // B, B).

    The last ``N % B`` symbols are dropped, so that every stream has equal length.
    """
    length = ids.numel() // batch_size
    return ids[: length * batch_size].view(batch_size, length).t().contiguous()


def check_stream_length(part: str, ids: Tensor, batch_size: int, seq_len: int) -> None:
    """Raise ``ValueError`` unless each of B streams gets ``seq_len + 1`` symbols.

    One chunk of ``seq_len`` inputs needs ``seq_len + 1`` symbols, because the
    targets are the inputs shifted by one.
    """
    per_stream = ids.numel() // batch_size
    if per_stream < seq_len + 1:
        raise ValueError(
            f"sequence length {seq_len} is longer than the data allows: the "
            f"{part} part has {ids.numel()} symbols, which gives {per_stream} per "
            f"stream with batch size {batch_size}, and a chunk needs "
            f"{seq_len + 1}; lower the sequence length or the batch size"
        )


def iterate_chunks(streams: Tensor, seq_len: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (inputs, targets), both (T, B) with T <= seq_len, in stream order.

    Targets are the inputs shifted one step ahead. The last chunk is shorter
    when the streams do not divide evenly; a chunk of no steps is never yielded.
    """
    last = streams.shape[0] - 1
    for start in range(0, last, seq_len):
        stop = min(start + seq_len, last)
        yield streams[start:stop], streams[start + 1 : stop + 1]


def count_chunks(streams: Tensor, seq_len: int) -> int:
    """Return how many chunks ``iterate_chunks`` yields."""
    last = streams.shape[0] - 1
    return max(0, -(-last // seq_len))
