"""Data-parallel training on PyTorch's own engine (torch.distributed), for processes started by torchrun.

``torchrun --nproc-per-node N -m compress distill ...`` starts N copies of the command. Each reads
the facts torchrun puts in its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and joins one process group here: gloo on CPU, nccl on CUDA. Every rank loads the same data and
builds the same model from the same seed; each trains on its slice of every global batch
(``--batch-size`` is the global batch), DistributedDataParallel averages the gradients, metrics are
summed across ranks, and rank 0 alone writes files while the others wait at a barrier.

A single process (no torchrun, or torchrun with one process) never touches torch.distributed.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CompressError, first_line, foreign_errors
from .launch import TORCHRUN_HINT, env_int, launched_size

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """The processes training together, as this one sees them."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # where this rank's tensors live, and its collectives run

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes artifacts, manifests and progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64, so counts stay exact)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank (plain data: it travels pickled between our own processes)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def from_all(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def main_does(self, work: Callable[[], Any]) -> Any:
        """``work()`` done by rank 0 alone (it reads or writes the files), its result on every rank.

        A failure there fails every rank with the same message, so no rank waits for one that stopped."""
        if not self.distributed:
            return work()
        failure, result, outcome = None, None, None
        if self.main:
            try:
                result = work()
                outcome = ("done", result)
            except Exception as exc:
                failure = exc
                said = str(exc) if isinstance(exc, CompressError) else f"rank 0 failed: {first_line(exc)}"
                outcome = ("failed", said)
        outcome = self.from_main(outcome)
        # every rank holds rank 0's message before any goes on: one that left (and closed its connections)
        # while another still read it would make gloo abort that one
        self.barrier()
        if failure is not None:
            raise failure
        if outcome[0] == "failed":
            raise CompressError(outcome[1])
        return result if self.main else outcome[1]

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """The ranks' consecutive blocks of rows (see ``block``), joined in rank order on every rank."""
        if not self.distributed:
            return rows
        import torch.distributed as dist

        size = -(-total // self.size)
        padded = torch.zeros((size, *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[: len(rows)] = rows.to(self.device)
        blocks = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(blocks, padded)
        return torch.cat(blocks)[:total]

    def block(self, total: int) -> slice:
        """This rank's share of ``total`` items: consecutive blocks of equal size, the last one shorter."""
        size = -(-total // self.size)
        return slice(min(total, self.rank * size), min(total, (self.rank + 1) * size))

    def describe(self, global_batch: int) -> dict[str, Any]:
        """What the manifest records of the run's processes."""
        return {
            "world_size": self.size,
            "backend": self.backend,
            "global_batch": global_batch,
            "batch_per_process": global_batch // self.size,
        }


SINGLE = World()


def join(device: torch.device) -> World:
    """This process's place among the processes torchrun started (``SINGLE`` without torchrun).

    Joins the process group once per process: gloo on CPU, nccl on CUDA, where each process
    takes the GPU of its local rank. Processes other than rank 0 keep only errors in the log.
    """
    import torch.distributed as dist

    size = launched_size()
    if size <= 1:
        return World(device=device)
    rank, local_rank = env_int("RANK", -1), env_int("LOCAL_RANK", 0)
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing or not rank < size:
        raise CompressError(
            f"WORLD_SIZE={size} asks for a distributed run, but {', '.join(missing) or f'RANK={rank}'} "
            f"does not fit; {TORCHRUN_HINT}"
        )
    if not dist.is_available():
        raise CompressError("this PyTorch build has no torch.distributed; install the standard build")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise CompressError(
                f"process {local_rank} of this machine has no GPU of its own ({visible} visible); "
                f"start at most {visible} processes per machine (--nproc-per-node), or use --device cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        with foreign_errors(
            f"joining the {size} processes ({backend}, rendezvous {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']}) failed",
            "check that every process was started with the same torchrun command and can reach the endpoint",
        ):
            dist.init_process_group(backend, rank=rank, world_size=size)
        atexit.register(_leave)
    elif dist.get_backend() != backend:
        raise CompressError(
            f"this process already joined a {dist.get_backend()} group, but --device {device.type} needs {backend}; "
            "use the same --device for every stage of the process"
        )
    if rank != 0:  # every rank does the same work: rank 0's messages speak for all
        logging.getLogger("compress").setLevel(logging.ERROR)
    return World(size, rank, local_rank, backend, device)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The model as it trains: in DistributedDataParallel across several processes, else as it is."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[world.device.index] if world.device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: one copy fewer per step
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module itself, without the DistributedDataParallel wrapper (its names and weights)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of parameters trained beside the model (hint projections) over the
    ranks, as DistributedDataParallel does for the model's own."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world.size


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers of ``module`` (batch-norm statistics) on every rank, as DistributedDataParallel gives
    the model's own: for a network trained beside the model, whose parameters ``average_gradients`` keeps equal
    but whose statistics each rank gathers from its own slice of the batch."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
