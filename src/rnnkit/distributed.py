"""Train on several processes with PyTorch's own engine, ``torch.distributed``.

Processes come either from ``torchrun`` or from ``launch``, which starts N
local processes and gives each the environment variables that torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
From there both take the same path:

- ``init_process_group`` joins the group through ``env://``, with gloo on CPU
  and NCCL when the model trains on a GPU;
- ``wrap_model`` wraps the model in ``DistributedDataParallel``, which averages
  gradients across processes after each backward pass;
- every process draws the same shuffled order from the same seed and
  ``shard_batch`` gives it its own part of each global batch, padded with
  zero-weight rows so that every process runs the same number of rows;
- ``all_reduce_sum`` adds losses and counts across processes;
- only rank 0 writes files (``save_on_main_process``) and shows progress.

``launch`` keeps the group on the loopback interface: its rendezvous store
listens on 127.0.0.1 and gloo's ``GLOO_SOCKET_IFNAME`` is the loopback
interface.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rnnkit.files import save_atomically

logger = logging.getLogger(__name__)

LOOPBACK_ADDRESS = "127.0.0.1"
ENVIRONMENT_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class LaunchEnvironment:
    """The place of this process in a group, as torchrun describes it."""

    rank: int
    world_size: int
    local_rank: int


def launch_environment(
    environ: Mapping[str, str] | None = None,
) -> LaunchEnvironment | None:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; return None when
    neither ``RANK`` nor ``WORLD_SIZE`` is set.

    Raises ValueError when only one of ``RANK`` and ``WORLD_SIZE`` is set,
    when a value is not an integer, or when the rank is outside
    ``0 .. WORLD_SIZE - 1``.
    """
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        present, missing = (
            ("WORLD_SIZE", "RANK") if "RANK" not in environ else ("RANK", "WORLD_SIZE")
        )
        raise ValueError(
            f"incomplete distributed environment: {present} is set but {missing} "
            "is missing; launch with torchrun, or unset both"
        )
    # torch.distributed's env:// setup needs no LOCAL_RANK; it only picks the
    # GPU, and a process started without it is taken to be alone on its machine.
    environ = {"LOCAL_RANK": environ["RANK"], **environ}

    values = {}
    for name in ENVIRONMENT_VARIABLES:
        text = environ[name]
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(
                f"invalid environment variable {name}={text!r}: expected an integer"
            ) from None
    world_size, rank, local_rank = (
        values["WORLD_SIZE"],
        values["RANK"],
        values["LOCAL_RANK"],
    )
    if world_size < 1:
        raise ValueError(f"invalid WORLD_SIZE={world_size}: expected an integer >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"invalid RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world_size}"
        )
    if local_rank < 0:
        raise ValueError(f"invalid LOCAL_RANK={local_rank}: expected an integer >= 0")
    return LaunchEnvironment(rank=rank, world_size=world_size, local_rank=local_rank)


def is_distributed() -> bool:
    """Return whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Return whether this process is rank 0, the one that writes and reports."""
    return get_rank() == 0


def backend_for(device: torch.device) -> str:
    """Return the collective backend for a model on ``device``: NCCL or gloo."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(device: torch.device | None = None) -> bool:
    """Join the process group described by the environment variables.

    Returns True when this call created the group, and False when the
    environment describes no group or a group already exists.
    """
    environment = launch_environment()
    if environment is None or is_distributed():
        return False
    device = torch.device("cpu") if device is None else device
    backend = backend_for(device)
    if backend == "nccl":
        # NOTE: the forecast and text tasks train on CPU, so the tests run only
        # the gloo branch; this branch follows PyTorch's documented NCCL setup.
        torch.cuda.set_device(environment.local_rank)
    dist.init_process_group(
        backend, rank=environment.rank, world_size=environment.world_size
    )
    logger.info(
        "joined a %s process group as rank %d of %d",
        backend,
        environment.rank,
        environment.world_size,
    )
    return True


def destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


def wrap_model(model: nn.Module) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    With one process the model is returned as it is, so a training loop can
    call this unconditionally.
    """
    if get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside a DistributedDataParallel wrapper, or ``model``."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def shard_batch(
    batch: Tensor, rank: int | None = None, world_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Return this rank's part of a global batch of indices, and its row weights.

    Rank r takes rows ``r * P .. (r + 1) * P - 1`` of the batch, with
    ``P = ceil(len(batch) / world_size)``. Positions past the end repeat the
    last row with weight 0, so every rank runs P rows (DistributedDataParallel
    needs every rank to run a backward pass) but only real rows count.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if len(batch) == 0:
        raise ValueError("expected a non-empty batch of indices, got 0 indices")
    per_rank = math.ceil(len(batch) / world_size)
    positions = torch.arange(rank * per_rank, (rank + 1) * per_rank)
    real = positions < len(batch)
    indices = batch[positions.clamp(max=len(batch) - 1)]
    return indices, real.to(torch.float32)


def sharded_mse_loss(
    prediction: Tensor,
    target: Tensor,
    weights: Tensor,
    global_rows: int,
    world_size: int | None = None,
) -> Tensor:
    """Return this rank's share of the mean squared error of a global batch.

    prediction, target: (P, ...) for this rank's P rows; weights: (P,).
    The share is ``world_size * sum(weights * squared error) / (global_rows *
    elements per row)``: DistributedDataParallel divides the summed gradients
    by ``world_size``, which leaves the gradient of the mean over the whole
    global batch, whatever the split.
    """
    world_size = get_world_size() if world_size is None else world_size
    squared = (prediction - target).pow(2).reshape(len(prediction), -1)
    elements = global_rows * squared.shape[1]
    return world_size * (weights.to(squared.dtype) @ squared.sum(dim=1)) / elements


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Add ``values`` elementwise across all processes (float64), in place of
    each process's own; with one process they are returned unchanged."""
    if not is_distributed():
        return [float(value) for value in values]
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def shard_range(count: int) -> range:
    """Return this rank's contiguous part of ``range(count)``; parts differ in
    length by at most one and cover every index exactly once."""
    rank, world_size = get_rank(), get_world_size()
    return range(count * rank // world_size, count * (rank + 1) // world_size)


def atomic_save(payload: object, path: str | Path) -> None:
    """Write ``payload`` with ``torch.save`` to ``path`` atomically, creating its
    directory; see ``rnnkit.files.write_atomically``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(payload, path)


def save_on_main_process(payload: object, path: str | Path) -> None:
    """Write ``payload`` atomically to ``path`` on rank 0; other ranks do nothing."""
    if is_main_process():
        atomic_save(payload, path)


# Command-line launch -------------------------------------------------------


def check_devices(devices: int | None) -> int:
    """Return the number of local processes to start, checked.

    Raises ValueError for a count below 1, and for a count above 1 inside a
    group that torchrun already started.
    """
    if devices is None:
        return 1
    if isinstance(devices, bool) or not isinstance(devices, int):
        raise TypeError(
            f"expected the number of devices as an int, got {type(devices).__name__}"
        )
    if devices < 1:
        raise ValueError(f"invalid --devices {devices}: expected an integer >= 1")
    if devices > 1 and launch_environment() is not None:
        raise ValueError(
            f"--devices {devices} starts its own processes, but this process "
            "was already started by torchrun; leave out --devices and set the "
            "process count with torchrun's --nproc-per-node"
        )
    return devices


def run_command(handler: Callable[[argparse.Namespace], int], args) -> int:
    """Run a command handler on ``args.devices`` local processes, under torchrun,
    or in this process alone.

    Under torchrun (or in a process that ``launch`` started) this joins the
    process group, runs the handler, and leaves the group.
    """
    devices = check_devices(getattr(args, "devices", None))
    if devices > 1:
        return launch(handler, args, devices)
    if launch_environment() is None or is_distributed():
        return handler(args)

    init_process_group()
    try:
        return handler(args)
    finally:
        destroy_process_group()


def loopback_interface() -> str | None:
    """Return the name of the loopback network interface, or None if unknown."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (AttributeError, OSError):
        return None
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return None


def launch(
    function: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    devices: int,
) -> int:
    """Run ``function(args)`` on ``devices`` local processes joined on loopback.

    Returns the first non-zero exit code of a process, or 0. A ``ValueError``
    or ``OSError`` raised in a process is raised again here, preferring the
    lowest rank's, so that the caller reports it as if it had been raised in
    this process.
    """
    import torch.multiprocessing as multiprocessing

    # This process hosts the rendezvous store, as torchrun's agent does, on a
    # socket bound to 127.0.0.1 alone. The store listens on that socket, which
    # also leaves no window for another program to take the port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK_ADDRESS, 0))
    listener.listen()
    port = listener.getsockname()[1]
    store = dist.TCPStore(
        LOOPBACK_ADDRESS,
        port,
        world_size=devices,
        is_master=True,
        wait_for_workers=False,
        master_listen_fd=listener.detach(),
        # The libuv server of PyTorch 2.13 does not take a listening socket.
        use_libuv=False,
    )
    context = multiprocessing.get_context("spawn")
    errors = context.SimpleQueue()
    try:
        multiprocessing.spawn(
            _launched_process,
            args=(function, args, devices, port, errors),
            nprocs=devices,
            join=True,
        )
    except multiprocessing.ProcessExitedException as failure:
        raised = _first_error(errors)
        if raised is not None:
            raise raised from None
        return failure.exit_code if failure.exit_code > 0 else 1
    except multiprocessing.ProcessRaisedException:
        raised = _first_error(errors)
        if raised is not None:
            raise raised from None
        raise
    finally:
        del store
    return 0


def _launched_process(
    local_rank: int,
    function: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    devices: int,
    port: int,
    errors,
) -> None:
    os.environ.update(
        RANK=str(local_rank),
        WORLD_SIZE=str(devices),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(devices),
        MASTER_ADDR=LOOPBACK_ADDRESS,
        MASTER_PORT=str(port),
        # Makes every rank a client of the store that ``launch`` hosts, the
        # same variable torchrun's agent sets for the workers it starts.
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    interface = loopback_interface()
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    if "OMP_NUM_THREADS" not in os.environ:
        # The processes share the machine's cores; more threads than cores
        # would make them compete for the same ones.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    level = logging.WARNING if local_rank == 0 else logging.ERROR
    logging.basicConfig(level=level, format=f"rnnkit[rank {local_rank}]: %(message)s")

    try:
        code = run_command(function, argparse.Namespace(**{**vars(args), "devices": 1}))
    except (ValueError, OSError) as error:
        errors.put((local_rank, error))
        raise
    if code:
        sys.exit(code)


def _first_error(errors) -> BaseException | None:
    raised = []
    while not errors.empty():
        raised.append(errors.get())
    if not raised:
        return None
    return min(raised, key=lambda item: item[0])[1]
