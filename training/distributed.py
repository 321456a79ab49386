"""DDP set-up under torchrun and the collective helpers methods use (all no-ops in a single process).

The engine wraps the method with broadcast_buffers=False: per-sample state (registered buffers indexed by
`batch['index']`) is NOT broadcast from rank 0, because every rank updates different rows. A method that
keeps such state calls `sync_rows(buffer, index, values)` so all ranks write every rank's updates, and
`gather_cat` / `gather_cat_with_grad` to see the whole global batch (e.g. LA-Net's in-batch KNN).
BatchNorm running statistics stay rank-local (rank 0's are evaluated and saved).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.info("DDP rank %d/%d (local %d) on %s", rank, world, local, backend)
    return DistInfo(rank, world, local, backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0, rank order; no gradient."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, 0)


def gather_cat_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like gather_cat, but this rank's slice keeps its autograd graph (other ranks' slices are constants)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank()] = tensor
    return torch.cat(parts, 0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a new tensor)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


@torch.no_grad()
def sync_rows(buffer: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """buffer[index] = values on every rank, with every rank's (index, values) applied (equal batch sizes)."""
    if not is_distributed():
        buffer[index] = values.to(buffer.dtype)
        return
    all_index = gather_cat(index.to(buffer.device))
    all_values = gather_cat(values.to(buffer.dtype))
    buffer[all_index] = all_values


def broadcast_object(obj):
    """Rank 0's Python object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
