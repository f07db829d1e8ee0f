"""A wrapper that carries a recurrent layer's state from one call to the next.

``Streaming(layer)`` feeds the final state of each call into the next as the
initial state, so a long sequence fed in chunks of any sizes gives the same
outputs as one call. The stored state is detached from the autograd graph
after each call, so training on chunks is truncated backpropagation through
time: gradients flow within a chunk but not into earlier chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence


class Streaming(nn.Module):
    """Run ``layer`` over consecutive chunks of the same batch of sequences.

    ``layer`` is any rnnkit or ``torch.nn`` recurrent layer called as
    ``layer(input, hx)`` that returns ``(output, h_n)`` or
    ``(output, (h_n, c_n))``: ``RNN``, ``LSTM``, ``GRU``, the layer-normalised
    and the minimal layers. Bidirectional layers are rejected, because the
    reverse direction of a chunk needs the steps that have not arrived yet.

    The batch size is fixed by the first call after construction or
    ``reset()``. A call with another batch size raises ``ValueError``; call
    ``reset()`` first to start a new batch.

    >>> import rnnkit
    >>> stream = Streaming(rnnkit.GRU(input_size=2, hidden_size=3))
    >>> first = stream(torch.zeros(4, 5, 2))  # (T, B, I), 4 steps of 5 sequences
    >>> second = stream(torch.zeros(2, 5, 2))  # continues from step 4
    >>> tuple(stream.step(torch.zeros(5, 2)).shape)  # one step: (B, I) -> (B, H)
    (5, 3)
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"expected a recurrent layer (an nn.Module), got {type(layer).__name__}"
            )
        if getattr(layer, "bidirectional", False):
            raise ValueError(
                "expected a unidirectional layer, got bidirectional=True: the "
                "reverse direction of a chunk depends on steps not yet fed"
            )
        self.layer = layer
        # The detached final state of the last call: a tensor, a (h, c) pair,
        # or None before the first call and after reset().
        self.state: Tensor | tuple[Tensor, ...] | None = None

    def forward(self, input, *, lengths=None, reset_rows=None):
        """Run the layer over the next chunk and return its output.

        ``input`` is any input form of the layer. ``lengths`` (padded input
        only) is passed on to the layer, so a row with fewer valid steps in this
        chunk carries the state of its last valid step. ``reset_rows``, a bool
        mask (B,), restarts those rows from a zero state before the chunk, as
        ``reset(reset_rows)`` does.
        """
        if reset_rows is not None:
            self.reset(reset_rows)
        self._check_batch(self._batch_size(input))

        if lengths is None:
            output, final = self.layer(input, self.state)
        else:
            output, final = self.layer(input, self.state, lengths=lengths)

        if isinstance(final, tuple):
            self.state = tuple(s.detach() for s in final)
        else:
            self.state = final.detach()
        return output

    def step(self, input: Tensor) -> Tensor:
        """Run one time step: input (B, I), or (I,) unbatched, to output (B, H_out)."""
        if not isinstance(input, Tensor):
            raise TypeError(
                f"expected input to be a Tensor, got {type(input).__name__}"
            )
        if input.dim() not in (1, 2):
            raise ValueError(
                "expected one step of input, (B, I) or (I,) unbatched, "
                f"got shape {tuple(input.shape)}"
            )
        if input.dim() == 1:
            return self(input.unsqueeze(0)).squeeze(0)
        time_axis = 1 if getattr(self.layer, "batch_first", False) else 0
        return self(input.unsqueeze(time_axis)).squeeze(time_axis)

    def reset(self, rows: Tensor | Sequence[bool] | None = None) -> None:
        """Restart from a zero state: every row, or the rows where ``rows`` is True.

        ``rows`` is a bool mask (B,) over the batch of the stored state. With
        ``rows=None`` the stored state is dropped, so the next call may also
        change the batch size.
        """
        if rows is None:
            self.state = None
            return
        if not isinstance(rows, Tensor):
            rows = torch.as_tensor(list(rows))
        if rows.dtype != torch.bool:
            raise TypeError(
                f"expected rows as a bool mask over the batch, got dtype {rows.dtype}"
            )
        if self.state is None:
            return
        states = self.state if isinstance(self.state, tuple) else (self.state,)
        batch = self._stored_batch()
        if batch is None:
            raise ValueError(
                "a per-row reset needs a batched state, but the stored state is "
                "unbatched; call reset() to restart it"
            )
        if tuple(rows.shape) != (batch,):
            raise ValueError(
                f"expected rows of shape ({batch},), one per batch row, "
                f"got shape {tuple(rows.shape)}"
            )

        # State tensors are (L*D, B, H): zero the selected batch rows.
        keep = (~rows).to(states[0].device).view(1, batch, 1)
        reset = tuple(s * keep.to(s.dtype) for s in states)
        self.state = reset if isinstance(self.state, tuple) else reset[0]

    def extra_repr(self) -> str:
        batch = self._stored_batch()
        if self.state is None:
            return "state=None"
        return f"state=batch of {batch}" if batch is not None else "state=unbatched"

    # Batch-size checks.

    def _batch_size(self, input) -> int | None:
        """Return the batch size of ``input``, or None for unbatched input."""
        if isinstance(input, PackedSequence):
            return int(input.batch_sizes[0]) if len(input.batch_sizes) else 0
        if not isinstance(input, Tensor):
            raise TypeError(
                "expected input to be a Tensor or a PackedSequence, "
                f"got {type(input).__name__}"
            )
        if input.dim() == 2:
            return None
        if input.dim() != 3:
            raise ValueError(
                "expected input of 3 dimensions, or 2 dimensions (T, I) "
                f"unbatched, got shape {tuple(input.shape)}"
            )
        return (
            input.shape[0]
            if getattr(self.layer, "batch_first", False)
            else (input.shape[1])
        )

    def _stored_batch(self) -> int | None:
        """Return the batch size of the stored state, or None when it is unbatched."""
        state = self.state[0] if isinstance(self.state, tuple) else self.state
        return state.shape[1] if state.dim() == 3 else None

    def _check_batch(self, batch: int | None) -> None:
        if self.state is None:
            return
        stored = self._stored_batch()
        if batch == stored:
            return

        def describe(size):
            return "unbatched input" if size is None else f"a batch of {size}"

        raise ValueError(
            f"expected {describe(stored)} to continue the stored state, got "
            f"{describe(batch)}; call reset() before starting another batch"
        )
