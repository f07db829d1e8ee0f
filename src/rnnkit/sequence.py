"""The one time-major layout every layer runs on, and the input forms that map to it.

A layer runs on a sequence batch as packed rows. ``data`` (N, F) contains the
rows of step 0, then those of step 1, and so on. Step t has ``batch_sizes[t]``
rows, a prefix of the batch sorted by decreasing length. A padded tensor with no
lengths is the case where every step has all B rows; a ``PackedSequence`` is
that layout already; a padded tensor with ``lengths`` is gathered into it and
scattered back, so lengths need no packing by the caller and may be zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


@dataclass
class Layout:
    """Packed rows of a sequence batch and what is needed to give them back."""

    data: Tensor
    batch_sizes: list[int]
    batch: int
    # Row r of the packed batch is row sorted_indices[r] of the caller's batch.
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None
    # For padded input with lengths: the index of each packed row in (T*B).
    scatter_index: Tensor | None = None
    steps: int = 0
    packed_input: PackedSequence | None = None

    def restore(self, output: Tensor) -> Tensor | PackedSequence:
        """Return the output rows (N, F) in the caller's form: time-major or packed."""
        if self.packed_input is not None:
            return PackedSequence(
                output,
                self.packed_input.batch_sizes,
                self.packed_input.sorted_indices,
                self.packed_input.unsorted_indices,
            )
        features = output.shape[-1]
        if self.scatter_index is None:
            return output.view(self.steps, self.batch, features)
        padded = output.new_zeros(self.steps * self.batch, features)
        padded = padded.index_copy(0, self.scatter_index, output)
        return padded.view(self.steps, self.batch, features)

    def to_sorted(self, state: Tensor) -> Tensor:
        """Reorder a state (L*D, B, H) from the caller's row order to packed order."""
        if self.sorted_indices is None:
            return state
        return state.index_select(1, self.sorted_indices)

    def to_caller(self, state: Tensor) -> Tensor:
        """Reorder a state (L*D, B, H) from packed order back to the caller's."""
        if self.unsorted_indices is None:
            return state
        return state.index_select(1, self.unsorted_indices)


def from_padded(x: Tensor) -> Layout:
    """Lay out a time-major padded batch (T, B, F) with every row of full length.

    An empty batch (B = 0) has no step to run, as in ``torch.nn``, which returns
    an empty output for it.
    """
    steps, batch = x.shape[0], x.shape[1]
    return Layout(
        data=x.reshape(steps * batch, x.shape[2]),
        batch_sizes=[batch] * steps if batch else [],
        batch=batch,
        sorted_indices=None,
        unsorted_indices=None,
        steps=steps,
    )


def from_packed(packed: PackedSequence) -> Layout:
    """Lay out a ``PackedSequence`` as it is."""
    batch_sizes = packed.batch_sizes.tolist()
    return Layout(
        data=packed.data,
        batch_sizes=batch_sizes,
        batch=batch_sizes[0] if batch_sizes else 0,
        sorted_indices=packed.sorted_indices,
        unsorted_indices=packed.unsorted_indices,
        steps=len(batch_sizes),
        packed_input=packed,
    )


def from_lengths(x: Tensor, lengths: Tensor | list[int]) -> Layout:
    """Lay out a time-major padded batch (T, B, F) whose row b has ``lengths[b]`` steps.

    Raises ``ValueError`` for lengths of the wrong count, negative or longer
    than T.
    """
    steps, batch = x.shape[0], x.shape[1]
    lengths = check_lengths(lengths, steps, batch)

    lengths = lengths.to(x.device)
    sorted_lengths, sorted_indices = torch.sort(lengths, descending=True, stable=True)
    unsorted_indices = torch.empty_like(sorted_indices)
    unsorted_indices[sorted_indices] = torch.arange(batch, device=x.device)
    max_length = int(sorted_lengths[0]) if batch else 0
    batch_sizes = [int((sorted_lengths > t).sum()) for t in range(max_length)]

    scatter_index = torch.cat(
        [t * batch + sorted_indices[:size] for t, size in enumerate(batch_sizes)]
        or [sorted_indices.new_empty(0)]
    )
    data = x.reshape(steps * batch, x.shape[2]).index_select(0, scatter_index)
    return Layout(
        data=data,
        batch_sizes=batch_sizes,
        batch=batch,
        sorted_indices=sorted_indices,
        unsorted_indices=unsorted_indices,
        scatter_index=scatter_index,
        steps=steps,
    )


def check_lengths(lengths: Tensor | list[int], steps: int, batch: int) -> Tensor:
    """Return ``lengths`` as an int64 CPU tensor after checking it fits (T, B)."""
    if not isinstance(lengths, Tensor):
        # No dtype is forced here, so that floats in a list are rejected below
        # instead of being truncated. An empty list would otherwise be float.
        try:
            lengths = torch.as_tensor(lengths if len(lengths) else [])
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                "expected lengths as a list, tuple, array or 1-D tensor of "
                f"integers, got {type(lengths).__name__}"
            ) from error
        if lengths.numel() == 0:
            lengths = lengths.to(torch.int64)
    dtype = lengths.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"expected lengths of an integer dtype, got {dtype}")
    lengths = lengths.detach().to("cpu", torch.int64)
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(
            f"expected lengths of shape ({batch},), one per batch row, "
            f"got shape {tuple(lengths.shape)}"
        )
    if batch and int(lengths.min()) < 0:
        raise ValueError(
            f"lengths must be non-negative, got {int(lengths.min())} "
            f"at row {int(lengths.argmin())}"
        )
    if batch and int(lengths.max()) > steps:
        raise ValueError(
            f"lengths must not exceed the sequence length T={steps}, "
            f"got {int(lengths.max())} at row {int(lengths.argmax())}"
        )
    return lengths
