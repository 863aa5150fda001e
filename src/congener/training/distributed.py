"""Data-parallel training over processes: torch.distributed's DistributedDataParallel, launched
by `torchrun` (one process per GPU, or per CPU socket with the gloo backend).

    torchrun --nproc_per_node 4 -m congener train --train big.extxyz --val val.extxyz -o run

Every rank holds the whole data set and draws the same batch order from the run's seed; each
global batch is split across the ranks (rank r takes every W-th structure). A rank's loss
terms are means over its part, rescaled to the means over the whole batch (`shares`) and
multiplied by W, so that DDP's averaged gradient is exactly the gradient of the
single-process loss on the same batch: the same seed and batches give the same weights, to
float rounding, on any number of ranks. Validation sums are split and reduced the same way.
Only rank 0 writes checkpoints, history and the model; every rank reads `last.pt` to resume.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from congener.training.data import LabelledSet


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: rank, world size and local rank (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


SINGLE = Ranks()  # one process: no process group


def current() -> Ranks:
    """The initialised process group's ranks, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Ranks()


def init_from_env() -> Ranks:
    """Join the process group that `torchrun` describes in the environment (WORLD_SIZE > 1):
    nccl when CUDA is available, gloo otherwise. A single process is returned unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() \
            and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """One GPU per local rank when training on CUDA with several ranks."""
    if ranks.world > 1 and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def wrap(module: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """`module` in DistributedDataParallel when there are several ranks (else itself). Buffers
    (reference energies) change identically on every rank, so they are not broadcast."""
    if ranks.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    param = next(module.parameters())
    ids = [param.device.index] if param.device.type == "cuda" else None
    # row vectors of shape [1, n] get gradients with strides (1, 1) where DDP's buckets have
    # (n, 1): the same memory layout, which DDP reports on every step; nothing to act on
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def shard(indices: Sequence[int], ranks: Ranks) -> list[int]:
    """This rank's part of a global batch: every `world`-th structure from `rank` on."""
    return list(indices[ranks.rank::ranks.world])


def _counts(data: LabelledSet, indices: Sequence[int]) -> np.ndarray:
    """(energy, force, stress) weights of the loss terms' means over `indices`."""
    idx = list(indices)
    w = (np.ones(len(idx)) if data.weights is None else data.weights[idx].numpy())
    n_atoms = data.n_atoms[idx].numpy()
    has_stress = data.has_stress[idx].numpy()
    return np.array([w.sum(), (w * n_atoms).sum(), (w * has_stress).sum()])


def shares(data: LabelledSet, batch: Sequence[int], part: Sequence[int], ranks: Ranks
           ) -> tuple[float, float, float] | None:
    """Factors of the loss terms on `part` that make DDP's averaged gradient the gradient of
    the mean over `batch`: W x (part's weight / batch's weight) per term; None for one rank.
    An empty part (a last batch smaller than W) gets zeros: that rank still takes part in the
    gradient reduction, with a forward pass whose loss counts nothing."""
    if ranks.world == 1:
        return None
    if not part:
        return (0.0, 0.0, 0.0)
    local, total = _counts(data, part), _counts(data, batch)
    out = np.where(total > 0, ranks.world * local / np.where(total > 0, total, 1.0), 0.0)
    return (float(out[0]), float(out[1]), float(out[2]))


def all_reduce_sum(values: np.ndarray, ranks: Ranks, device: torch.device) -> np.ndarray:
    """Sum of `values` over the ranks (a copy of `values` for one rank)."""
    if ranks.world == 1:
        return np.asarray(values, dtype=np.float64)
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def reduce_gradient(param: torch.nn.Parameter, ranks: Ranks) -> None:
    """Make the gradient of a parameter outside the DDP module (the reference-energy step)
    what DDP makes of the others: the mean over the ranks."""
    if ranks.world > 1 and param.grad is not None:
        dist.all_reduce(param.grad)
        param.grad /= ranks.world
