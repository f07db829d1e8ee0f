"""Side-by-side speed and memory of torch.nn's recurrent layers and rnnkit's.

Each case builds a ``torch.nn`` layer and its rnnkit copy (same weights, same
input) and times both in one process, interleaved: after warm-up runs, each
repeat runs torch.nn once and rnnkit once, and the median of each is kept.
The ratio is torch.nn time / rnnkit time, so above 1 means rnnkit is faster.

Peak memory is measured for forward + backward with ``torch.profiler``
(``profile_memory=True``): every allocation and release through torch's CPU
allocator is recorded with its size, and the peak is the highest running sum
during the run, counted from zero at its start. Tensors that exist before the
run (weights, input) are not counted; memory that a library allocates outside
torch's allocator (such as oneDNN scratch space, if any) is not seen.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

import rnnkit
from rnnkit.kernels import backend

CELLS = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
PASSES = ("inference", "training")
# (T, B, I, H): time steps, batch, input features, hidden size.
DEFAULT_SIZES = [
    (100, 1, 1, 32),
    (200, 32, 32, 64),
    (100, 64, 128, 256),
    (50, 64, 512, 512),
]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    cell: str
    steps: int
    batch: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    pass_: str = "training"

    def label(self) -> str:
        text = f"{self.cell} T={self.steps} B={self.batch} I={self.input_size} "
        text += f"H={self.hidden_size}"
        if self.num_layers != 1:
            text += f" L={self.num_layers}"
        if self.bidirectional:
            text += " bi"
        return text


@dataclass
class Result:
    """Median times in milliseconds and, for training, peak memory in bytes."""

    case: Case
    torch_ms: float
    rnnkit_ms: float
    torch_peak_bytes: int | None = None
    rnnkit_peak_bytes: int | None = None

    @property
    def ratio(self) -> float:
        return self.torch_ms / self.rnnkit_ms

    def to_dict(self) -> dict:
        record = asdict(self.case)
        record["pass"] = record.pop("pass_")
        record.update(
            torch_ms=self.torch_ms,
            rnnkit_ms=self.rnnkit_ms,
            ratio=self.ratio,
            torch_peak_bytes=self.torch_peak_bytes,
            rnnkit_peak_bytes=self.rnnkit_peak_bytes,
        )
        return record


def make_cases(
    cells: list[str],
    sizes: list[tuple[int, int, int, int]],
    passes: list[str],
    num_layers: int = 1,
    bidirectional: bool = False,
) -> list[Case]:
    """Return the grid of cases, raising ValueError for an unknown cell or pass."""
    for cell in cells:
        if cell not in CELLS:
            raise ValueError(f"expected a cell among {', '.join(CELLS)}, got {cell!r}")
    for pass_ in passes:
        if pass_ not in PASSES:
            raise ValueError(
                f"expected a pass among {', '.join(PASSES)}, got {pass_!r}"
            )
    for size in sizes:
        if len(size) != 4 or any(value <= 0 for value in size):
            raise ValueError(
                f"expected a size of four positive integers T,B,I,H, got {size!r}"
            )
    if num_layers <= 0:
        raise ValueError(f"expected num_layers greater than zero, got {num_layers}")
    return [
        Case(cell, *size, num_layers=num_layers, bidirectional=bidirectional, pass_=p)
        for size in sizes
        for cell in cells
        for p in passes
    ]


def _make_layers(
    case: Case, seed: int = 0
) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    torch_layer = CELLS[case.cell](
        case.input_size,
        case.hidden_size,
        num_layers=case.num_layers,
        bidirectional=case.bidirectional,
    )
    rnnkit_layer = rnnkit.from_torch(torch_layer)
    x = torch.randn(case.steps, case.batch, case.input_size)
    return torch_layer, rnnkit_layer, x


def _make_run(layer: nn.Module, x: torch.Tensor, pass_: str) -> Callable[[], None]:
    if pass_ == "inference":

        def run() -> None:
            with torch.no_grad():
                layer(x)

        return run

    parameters = list(layer.parameters())

    def run() -> None:
        for parameter in parameters:
            parameter.grad = None
        output, _ = layer(x)
        output.sum().backward()

    return run


def peak_memory(run: Callable[[], None]) -> int:
    """Return the peak bytes allocated through torch's CPU allocator during run()."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with (
        _quiet_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        run()
    allocations = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation:
            allocations.append((event.start_time_ns, event.extra_fields.alloc_size))
    allocations.sort()
    current = peak = 0
    for _, size in allocations:
        current += size
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2, where the profiler's C++ side prints status lines."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(
    case: Case, repeats: int = 10, warmup: int = 3, memory: bool = True
) -> Result:
    """Time torch.nn and rnnkit on one case, interleaved, and return the medians."""
    torch_layer, rnnkit_layer, x = _make_layers(case)
    torch_run = _make_run(torch_layer, x, case.pass_)
    rnnkit_run = _make_run(rnnkit_layer, x, case.pass_)
    for _ in range(warmup):
        torch_run()
        rnnkit_run()

    torch_times, rnnkit_times = [], []
    for _ in range(repeats):
        for run, times in ((torch_run, torch_times), (rnnkit_run, rnnkit_times)):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    result = Result(
        case,
        torch_ms=statistics.median(torch_times) * 1e3,
        rnnkit_ms=statistics.median(rnnkit_times) * 1e3,
    )
    if memory and case.pass_ == "training":
        result.torch_peak_bytes = peak_memory(torch_run)
        result.rnnkit_peak_bytes = peak_memory(rnnkit_run)
    return result


def run_cases(
    cases: list[Case],
    repeats: int = 10,
    warmup: int = 3,
    memory: bool = True,
    progress: Callable[[Result], None] | None = None,
) -> dict:
    """Measure every case; return a JSON-ready report with machine and settings."""
    results = []
    for case in cases:
        result = measure(case, repeats=repeats, warmup=warmup, memory=memory)
        results.append(result)
        if progress is not None:
            progress(result)
    return {
        "settings": {
            "repeats": repeats,
            "warmup": warmup,
            "threads": torch.get_num_threads(),
            "backend": backend.get_backend(),
            "dtype": "float32",
        },
        "machine": machine_info(),
        "results": [result.to_dict() for result in results],
    }


def machine_info() -> dict:
    """Return the CPU model, core count, load average, date and library versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": list(load) if load else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "torch": torch.__version__,
        "rnnkit": rnnkit.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def format_table(report: dict) -> str:
    """Return the results as a plain-text table, one row per case and pass."""
    header = (
        f"{'case':<42} {'pass':<9} {'torch ms':>9} {'rnnkit ms':>9} "
        f"{'ratio':>6} {'torch MB':>9} {'rnnkit MB':>9}"
    )
    lines = [header, "-" * len(header)]
    for record in report["results"]:
        case = Case(**{**_case_fields(record), "pass_": record["pass"]})
        lines.append(
            f"{case.label():<42} {record['pass']:<9} {record['torch_ms']:>9.2f} "
            f"{record['rnnkit_ms']:>9.2f} {record['ratio']:>6.2f} "
            f"{_megabytes(record['torch_peak_bytes']):>9} "
            f"{_megabytes(record['rnnkit_peak_bytes']):>9}"
        )
    return "\n".join(lines)


def _case_fields(record: dict) -> dict:
    names = ("cell", "steps", "batch", "input_size", "hidden_size", "num_layers")
    fields = {name: record[name] for name in names}
    fields["bidirectional"] = record["bidirectional"]
    return fields


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"
