"""Splitting a corpus and laying it out as parallel streams for truncated BPTT."""

import pytest
import torch

from rnnkit.tasks.text import streams


def test_split_validation_keeps_the_last_tenth():
    ids = torch.arange(1000)
    train, validation = streams.split_validation(ids, 0.1)
    assert torch.equal(train, torch.arange(900))
    assert torch.equal(validation, torch.arange(900, 1000))


def test_split_validation_rejects_too_short_text():
    with pytest.raises(ValueError, match="too few"):
        streams.split_validation(torch.arange(10), 0.1)


def test_make_streams_gives_contiguous_slices():
    ids = torch.arange(103)
    laid_out = streams.make_streams(ids, 4)
    assert laid_out.shape == (25, 4)
    for b in range(4):
        assert laid_out[:, b].tolist() == list(range(25 * b, 25 * (b + 1)))


def test_chunks_shift_targets_and_cover_each_stream():
    laid_out = streams.make_streams(torch.arange(4 * 23), 4)
    chunks = list(streams.iterate_chunks(laid_out, 5))
    assert len(chunks) == streams.count_chunks(laid_out, 5)
    assert [inputs.shape[0] for inputs, _ in chunks] == [5, 5, 5, 5, 2]
    for inputs, targets in chunks:
        assert torch.equal(targets, inputs + 1)
    # The inputs of all chunks, in order, are each stream but its last symbol.
    joined = torch.cat([inputs for inputs, _ in chunks])
    assert torch.equal(joined, laid_out[:-1])


def test_count_chunks_matches_iteration_for_exact_fit():
    laid_out = streams.make_streams(torch.arange(2 * 11), 2)
    assert streams.count_chunks(laid_out, 5) == 2
    assert len(list(streams.iterate_chunks(laid_out, 5))) == 2


def test_check_stream_length_rejects_long_sequence():
    ids = torch.arange(1000)
    streams.check_stream_length("training", ids, 10, 99)
    with pytest.raises(ValueError, match="sequence length 100 is longer than"):
        streams.check_stream_length("training", ids, 10, 100)
