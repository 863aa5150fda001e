"""Periodic neighbour graphs with triplets, batched over structures.

Flow: `ase.Atoms` -> `build_graph` -> `Graph` -> model. The neighbour list comes from vesin
(periodic, correct for cells shorter than twice the cutoff). Triplets are built here by hand:
no maintained library enumerates DimeNet-style edge pairs with periodic images.

Conventions
- Edge e = (i, j, S): centre atom i, neighbour j seen through the periodic image S (integer
  cell shifts). Its vector is r_e = x_j - x_i + S @ cell, pointing from centre to neighbour.
- Triplet t = (kj, ji): edge ji = (i, j, S_ji) and edge kj = (j, k, S_kj) with k != i, where
  "!=" compares atom *and* image (k == i only if S_kj + S_ji == 0). DimeNet's message from
  edge kj flows into edge ji; the angle is the one at j between j->i and j->k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from vesin import NeighborList

from congener.data.structures import periodic_cell_problem
from congener.errors import DataError


@dataclass
class Graph:
    """A batch of B structures with N atoms, E directed edges and T triplets.

    Fields (shape, unit):
        positions     [N,3] Å, float
        species       [N]   atomic numbers, long
        cell          [B,3,3] Å, lattice vectors as rows, float (zeros for free boundaries)
        batch         [N]   structure index of each atom, long
        n_atoms       [B]   atoms per structure, long
        edge_index    [2,E] (centre i, neighbour j), long
        cell_shifts   [E,3] integer image shifts S of the neighbour, float
        triplet_kj    [T]   index of edge kj of each triplet, long
        triplet_ji    [T]   index of edge ji of each triplet, long
        cutoff        Å, the cutoff the edges were built with
    """

    positions: Tensor
    species: Tensor
    cell: Tensor
    batch: Tensor
    n_atoms: Tensor
    edge_index: Tensor
    cell_shifts: Tensor
    triplet_kj: Tensor
    triplet_ji: Tensor
    cutoff: float

    def __post_init__(self) -> None:
        n, e, t = self.positions.shape[0], self.edge_index.shape[-1], self.triplet_kj.shape[0]
        b = self.n_atoms.shape[0]
        expected = {
            "positions": (n, 3), "species": (n,), "cell": (b, 3, 3), "batch": (n,),
            "edge_index": (2, e), "cell_shifts": (e, 3), "triplet_ji": (t,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Graph.{name} has shape {got}, expected {shape}")

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> Graph:
        """Move tensors to `device`; cast floating fields to `dtype`."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype if v.is_floating_point() and dtype else None)
            out[f.name] = v
        return Graph(**out)

    def edge_vectors(self, positions: Tensor | None = None, cell: Tensor | None = None
                     ) -> Tensor:
        """Edge vectors r_e = x_j - x_i + S @ cell [E,3] (Å), from given or own positions."""
        pos = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        i, j = self.edge_index[0], self.edge_index[1]
        edge_cell = cell.index_select(0, self.batch.index_select(0, i))
        shift = torch.bmm(self.cell_shifts.unsqueeze(1), edge_cell).squeeze(1)
        return pos.index_select(0, j) - pos.index_select(0, i) + shift


@dataclass
class _Single:
    """Numpy graph of one structure, before batching."""

    positions: np.ndarray
    species: np.ndarray
    cell: np.ndarray
    edge_index: np.ndarray
    cell_shifts: np.ndarray
    triplet_kj: np.ndarray
    triplet_ji: np.ndarray


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Full periodic neighbour list: edge_index [2,E] (centre, neighbour), shifts [E,3]."""
    periodic = np.asarray(atoms.pbc, dtype=bool)  # per axis: slabs (T, T, F) and wires work
    problem = periodic_cell_problem(atoms)
    if problem:
        raise DataError(f"{atoms.get_chemical_formula()} {problem}")
    points = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    box = _box(atoms.cell.array, periodic, points, cutoff) if periodic.any() else np.zeros((3, 3))
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(points=points, box=box, periodic=periodic, quantities="ijS")
    order = np.lexsort((j, i))  # sorted by centre: triplet building relies on it
    edge_index = np.stack([i[order], j[order]]).astype(np.int64)
    return edge_index, np.asarray(s[order], dtype=np.float64)


def _box(cell: np.ndarray, periodic: np.ndarray, points: np.ndarray, cutoff: float
         ) -> np.ndarray:
    """The cell as vesin needs it (full rank), for periodic rows already checked independent.
    ASE builds slabs and wires without vacuum with zero rows on their open axes; those rows
    become vectors normal to the others, longer than the structure's extent plus the cutoff.
    There are no images along open axes, so the neighbours do not change."""
    box = np.array(cell, dtype=np.float64)
    zero = ~periodic & (np.linalg.norm(box, axis=1) < 1e-9)
    if not zero.any():
        return box
    kept = box[~zero]
    # the directions orthogonal to the kept rows, from the SVD's right singular vectors
    normals = np.linalg.svd(kept, full_matrices=True)[2][len(kept):] if len(kept) else np.eye(3)
    for k, normal in zip(np.flatnonzero(zero), normals, strict=True):
        extent = float(np.ptp(points @ normal)) if len(points) else 0.0
        box[k] = normal * (extent + cutoff + 1.0)
    return box


def triplets(edge_index: np.ndarray, shifts: np.ndarray, n_atoms: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """All (kj, ji) edge pairs sharing atom j with k != i (atom and image).

    `edge_index` must be sorted by centre atom. Returns (triplet_kj, triplet_ji), each [T].
    """
    centre, neighbour = edge_index
    ptr = np.concatenate([[0], np.cumsum(np.bincount(centre, minlength=n_atoms))])
    n_kj = ptr[neighbour + 1] - ptr[neighbour]  # edges centred on j, for each edge ji
    ji = np.repeat(np.arange(centre.size), n_kj)
    start = np.repeat(ptr[neighbour], n_kj)
    offset = np.arange(ji.size) - np.repeat(np.cumsum(n_kj) - n_kj, n_kj)
    kj = start + offset
    same = (neighbour[kj] == centre[ji]) & np.all(shifts[kj] == -shifts[ji], axis=1)
    return kj[~same].astype(np.int64), ji[~same].astype(np.int64)


def _single(atoms: Atoms, cutoff: float, with_triplets: bool) -> _Single:
    if len(atoms) == 0:
        raise DataError("cannot build a graph of an empty structure")
    edge_index, shifts = neighbour_list(atoms, cutoff)
    if with_triplets:
        kj, ji = triplets(edge_index, shifts, len(atoms))
    else:
        kj = ji = np.zeros(0, dtype=np.int64)
    cell = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
    return _Single(np.asarray(atoms.positions, dtype=np.float64),
                   np.asarray(atoms.numbers, dtype=np.int64), np.asarray(cell, dtype=np.float64),
                   edge_index, shifts, kj, ji)


def collate(singles: Sequence[_Single], cutoff: float) -> Graph:
    """Concatenate single-structure graphs into one batched `Graph` (float64, CPU)."""
    atom_off = np.cumsum([0] + [len(s.species) for s in singles[:-1]])
    edge_off = np.cumsum([0] + [s.edge_index.shape[1] for s in singles[:-1]])
    cat = np.concatenate
    t = torch.from_numpy
    return Graph(
        positions=t(cat([s.positions for s in singles])),
        species=t(cat([s.species for s in singles])),
        cell=t(np.stack([s.cell for s in singles])),
        batch=t(np.repeat(np.arange(len(singles)), [len(s.species) for s in singles])),
        n_atoms=torch.tensor([len(s.species) for s in singles], dtype=torch.long),
        edge_index=t(cat([s.edge_index + a for s, a in zip(singles, atom_off, strict=True)],
                         axis=1)),
        cell_shifts=t(cat([s.cell_shifts for s in singles])),
        triplet_kj=t(cat([s.triplet_kj + e for s, e in zip(singles, edge_off, strict=True)])),
        triplet_ji=t(cat([s.triplet_ji + e for s, e in zip(singles, edge_off, strict=True)])),
        cutoff=float(cutoff),
    )


def build_graph(structures: Atoms | Sequence[Atoms], cutoff: float, *,
                with_triplets: bool = True) -> Graph:
    """Batched neighbour graph of one or several structures (float64 on the CPU).

    Use `Graph.to(device, dtype)` to move it. Structures may differ in size and elements.
    """
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures:
        raise DataError("cannot build a graph of zero structures")
    return collate([_single(a, cutoff, with_triplets) for a in structures], cutoff)


class GraphCache:
    """Single-structure graphs built once and batched on demand (training data are static)."""

    def __init__(self, structures: Sequence[Atoms], cutoff: float) -> None:
        self.cutoff = float(cutoff)
        self._singles = [_single(a, self.cutoff, True) for a in structures]

    def __len__(self) -> int:
        return len(self._singles)

    def batch(self, indices: Sequence[int]) -> Graph:
        """The batched graph of the structures at `indices`."""
        return collate([self._singles[k] for k in indices], self.cutoff)
