"""Labelled structures as batched graphs plus target tensors, built once per training run."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from torch import Tensor

from congener.data.structures import energy_of, forces_of, stress_of, validate
from congener.errors import DataError
from congener.graph import Graph, GraphCache
from congener.models.potential import Potential, Prediction


@dataclass
class Targets:
    """Reference labels of a batch: energy [B] eV (float64), forces [N,3] eV/Å,
    stress [B,3,3] eV/Å³ with has_stress [B] marking structures that carry one; weight [B]
    multiplies each structure's terms in the loss (None: all equal)."""

    energy: Tensor
    forces: Tensor
    stress: Tensor
    has_stress: Tensor
    n_atoms: Tensor
    weight: Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> Targets:
        return Targets(self.energy.to(device), self.forces.to(device, dtype),
                       self.stress.to(device, dtype), self.has_stress.to(device),
                       self.n_atoms.to(device),
                       None if self.weight is None else self.weight.to(device, dtype))


class LabelledSet:
    """Structures with their graphs (built once) and labels, batched on demand. `weights`
    (one per structure, >= 0) weight each structure's loss terms, e.g. DFT structures mixed
    into a distillation set; None weights all alike."""

    def __init__(self, structures: Sequence[Atoms], cutoff: float, *, name: str = "data",
                 weights: Sequence[float] | None = None) -> None:
        if not structures:
            raise DataError(f"{name} holds no structures")
        if weights is not None and (len(weights) != len(structures)
                                    or not np.all(np.isfinite(weights))
                                    or np.any(np.asarray(weights) < 0)
                                    or not np.any(np.asarray(weights) > 0)):
            raise DataError(f"{name}: weights must be one finite value >= 0 per structure, "
                            "not all 0")
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        validate(structures, where=name)
        self.name = name
        self.structures = list(structures)
        self.graphs = GraphCache(self.structures, cutoff)
        self.energy = torch.tensor([energy_of(a) for a in structures], dtype=torch.float64)
        self.forces = [torch.from_numpy(forces_of(a)) for a in structures]
        stresses = [stress_of(a) for a in structures]
        self.has_stress = torch.tensor([s is not None for s in stresses])
        self.stress = torch.from_numpy(np.stack([s if s is not None else np.zeros((3, 3))
                                                 for s in stresses]))
        self.n_atoms = torch.tensor([len(a) for a in structures])

    def __len__(self) -> int:
        return len(self.structures)

    def fingerprint(self) -> str:
        """Short SHA-256 of the structures and labels (a resumed run checks its data with it)."""
        digest = hashlib.sha256()
        for atoms in self.structures:
            for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
                digest.update(np.ascontiguousarray(array).tobytes())
        for tensor in (self.energy, *self.forces, self.stress, self.has_stress):
            digest.update(tensor.numpy().tobytes())
        if self.weights is not None:
            digest.update(self.weights.numpy().tobytes())
        return digest.hexdigest()[:16]

    def batch(self, indices: Sequence[int]) -> tuple[Graph, Targets]:
        idx = torch.as_tensor(list(indices))
        targets = Targets(self.energy[idx], torch.cat([self.forces[k] for k in indices]),
                          self.stress[idx], self.has_stress[idx], self.n_atoms[idx],
                          None if self.weights is None else self.weights[idx])
        return self.graphs.batch(indices), targets

    def batches(self, batch_size: int, order: Sequence[int] | None = None):
        """Yield (graph, targets) over all structures in `order` (default: as stored)."""
        order = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size])


def predictions(potential: Potential, data: LabelledSet, *, batch_size: int = 8,
                stress: bool = False) -> Iterator[tuple[Graph, Prediction]]:
    """`potential` on `data` batch by batch (graphs moved to its device and dtype); stress only
    when asked for, NaN for structures whose cell has no volume (molecules, slabs with a zero
    cell vector). Outputs are detached."""
    param = next(potential.parameters())
    for graph, _ in data.batches(batch_size):
        graph = graph.to(param.device, param.dtype)
        volume = torch.linalg.det(graph.cell).abs() > 1e-12
        with torch.enable_grad():  # a network without `energy_gradient` needs autograd
            out = potential(graph, stress=stress and bool(volume.any()))
        if out.stress is not None and not bool(volume.all()):
            out.stress = out.stress.masked_fill(~volume[:, None, None], float("nan"))
        yield graph, out
