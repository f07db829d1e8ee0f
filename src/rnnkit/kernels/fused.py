"""The fused CPU path: ``fused.cpp`` compiled on first use and registered as custom ops.

``torch.ops.rnnkit.fused_rnn_forward`` runs one layer and direction over a
packed sequence; ``torch.ops.rnnkit.fused_rnn_backward`` is its gradient.
Both are defined in C++ with ``TORCH_LIBRARY``, with their autograd formula.
This module adds their fake (meta) implementations, so that ``torch.compile``
and ``torch.export`` see one op per layer and direction.

The C++ source is built with ``torch.utils.cpp_extension.load`` the first time
it is needed and cached in torch's extension directory (``TORCH_EXTENSIONS_DIR``,
by default ``~/.cache/torch_extensions``), so later processes only load it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused.cpp")
DTYPES = (torch.float32, torch.float64)

# None until the first load attempt; then True, or the reason loading failed.
_loaded: bool | str | None = None
# Held while loading, so that threads making their first call at once load
# the library once.
_load_lock = threading.Lock()
# Set in a child process forked before the library was loaded.
_forked_before_load = False


def _after_fork_in_child() -> None:
    # A child forked after the library was loaded is marked by the library
    # itself, with pthread_atfork. A child forked before cannot know whether
    # its parent started OpenMP threads, whose pool does not survive fork().
    # It therefore runs the kernels on one thread once it loads them.
    global _forked_before_load
    if _loaded is not True:
        _forked_before_load = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _build_flags() -> tuple[str, list[str]]:
    """Return the extension name and compiler flags for this CPU.

    The name carries the instruction set, so that a cache directory shared by
    machines of different CPUs never loads a build the CPU cannot run.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    # Without trapping math, GCC vectorises the branch-free activations.
    # at::parallel_for is a header-only OpenMP loop in torch's CPU builds, so
    # without -fopenmp it runs on one thread.
    flags = ["-O3", "-DNDEBUG", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]
    if capability == "AVX512":
        # torch reports AVX512 only when the CPU has the F, BW, VL and DQ sets.
        flags += ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl"]
        flags += ["-mavx512dq"]
        return "rnnkit_fused_avx512", flags
    if capability == "AVX2":
        flags += ["-mavx2", "-mfma"]
        return "rnnkit_fused_avx2", flags
    return "rnnkit_fused_default", flags


def load() -> None:
    """Compile (on first use) and load the fused kernels, or raise RuntimeError.

    The outcome is remembered, so a failed build is tried once per process.
    """
    global _loaded
    if _loaded is True:
        return
    with _load_lock:
        if _loaded is None:
            _loaded = _try_load()
    if _loaded is not True:
        raise RuntimeError(f"the fused kernels could not be built or loaded: {_loaded}")


def is_available() -> bool:
    """Return whether the fused kernels are loaded, loading them if not yet tried."""
    try:
        load()
    except RuntimeError:
        return False
    return True


def load_error() -> str | None:
    """Return why the fused kernels failed to load, or None if they did not fail."""
    return _loaded if isinstance(_loaded, str) else None


def _try_load() -> bool | str:
    from torch.utils import cpp_extension

    name, flags = _build_flags()
    logger.info("loading the fused kernels (compiled on first use, up to a minute)")
    started = time.perf_counter()
    try:
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=flags,
            # Linked by soname, so the process reuses the libgomp that torch
            # loaded and both share one OpenMP thread pool. NOTE: checked with
            # the PyPI CPU wheel of torch 2.13, which ships libgomp. A torch
            # built with Intel's OpenMP would load a second runtime.
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError) as error:
        # cpp_extension reports a failed compiler run as RuntimeError and a
        # missing compiler or ninja as OSError or RuntimeError. Its message
        # contains the whole compiler output; its end names the first failure.
        message = " ".join(str(error).split())
        if len(message) > 600:
            message = message[:300] + " ... " + message[-300:]
        return f"{type(error).__name__}: {message}"
    logger.info(
        "loaded the fused kernels in %.1f s from %s",
        time.perf_counter() - started,
        cpp_extension._get_build_directory(name, verbose=False),
    )
    torch.library.register_fake("rnnkit::fused_rnn_forward", _fake_forward)
    torch.library.register_fake("rnnkit::fused_rnn_backward", _fake_backward)
    if _forked_before_load:
        torch.ops.rnnkit.mark_forked()
    return True


# Fake implementations, for tracing with fake tensors (torch.compile, export).


def _saved_width(mode: str, hidden: int) -> int:
    return {"LSTM": 5, "GRU": 4}.get(mode, 0) * hidden


def _fake_forward(
    input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse, train
):
    hidden = w_hh.shape[0] // {"LSTM": 4, "GRU": 3}.get(mode, 1)
    rows = input.shape[0]
    output = input.new_empty(rows, w_hh.shape[1])
    h_n = h0.new_empty(h0.shape)
    c_n = c0.new_empty(c0.shape) if mode == "LSTM" else input.new_empty(0)
    width = _saved_width(mode, hidden)
    workspace = input.new_empty(rows if train else 0, width if train else 0)
    return output, h_n, c_n, workspace


def _fake_backward(
    grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
    output, workspace, batch_sizes, mode, reverse, input_grad,
):  # fmt: skip
    empty = input.new_empty(0)
    return (
        input.new_empty(input.shape) if input_grad else empty,
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape) if mode == "LSTM" else empty,
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        b_ih.new_empty(b_ih.shape) if b_ih is not None else empty,
        b_hh.new_empty(b_hh.shape) if b_hh is not None else empty,
        w_hr.new_empty(w_hr.shape) if w_hr is not None else empty,
    )


def _call(op, *args):
    """Call op, going straight to its CPU kernel when grad mode is off.

    With grad mode off, the op's autograd kernel (in ``fused.cpp``) would only
    forward the call. Under torch.compile the op is always called as it is,
    so tracing sees it.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    state: tuple[Tensor, ...],
    weights: tuple[Tensor | None, ...],
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction with the fused op.

    Arguments and results are those of ``reference.run_direction``.
    """
    load()
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    h0 = state[0]
    c0 = state[1] if mode == "LSTM" else None
    tensors = (data, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    train = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )
    inputs = (data, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse)
    output, h_n, c_n, _ = _call(torch.ops.rnnkit.fused_rnn_forward, *inputs, train)
    if mode == "LSTM":
        return output, (h_n, c_n)
    return output, (h_n,)
