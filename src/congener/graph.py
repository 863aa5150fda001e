"""Periodic neighbour graphs with triplets, batched over structures.

Flow: `ase.Atoms` -> `build_graph` -> `Graph` -> model. The neighbour list comes from vesin
(periodic, correct for cells shorter than twice the cutoff). The reverse of each edge and the
triplets are found here by hand: no maintained library pairs DimeNet-style edges with periodic
images.

Conventions
- Edge e = (i, j, S): centre atom i, neighbour j seen through the periodic image S (integer
  cell shifts). Its vector is r_e = x_j - x_i + S @ cell, pointing from centre to neighbour.
- Triplet t = (kj, ji): edge ji = (i, j, S_ji) and edge kj = (j, k, S_kj) with k != i, where
  "!=" compares atom *and* image (k == i only if S_kj + S_ji == 0). DimeNet's message from
  edge kj flows into edge ji; the angle is the one at j between j->i and j->k.
- The list is full and symmetric: every edge (i, j, S) has its reverse (j, i, -S), whose
  index is `edge_reverse`. The triplets of edge ji are then all edges kj centred on j but
  ji's reverse, so a graph stores the reverse index and not the triplet list (T is ~27x E
  at 5 Å in diamond); `Graph.triplets()` lists them when they are wanted.
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
    """A batch of B structures with N atoms and E directed edges.

    Fields (shape, unit):
        positions     [N,3] Å, float
        species       [N]   atomic numbers, long
        cell          [B,3,3] Å, lattice vectors as rows, float (zeros for free boundaries)
        batch         [N]   structure index of each atom, long
        n_atoms       [B]   atoms per structure, long
        edge_index    [2,E] (centre i, neighbour j), sorted by centre, long
        cell_shifts   [E,3] integer image shifts S of the neighbour, float
        edge_reverse  [E]   index of the reverse edge (j, i, -S) of each edge, long
        cutoff        Å, the cutoff the edges were built with
    """

    positions: Tensor
    species: Tensor
    cell: Tensor
    batch: Tensor
    n_atoms: Tensor
    edge_index: Tensor
    cell_shifts: Tensor
    edge_reverse: Tensor
    cutoff: float

    def __post_init__(self) -> None:
        n, e, b = self.positions.shape[0], self.edge_index.shape[-1], self.n_atoms.shape[0]
        expected = {
            "positions": (n, 3), "species": (n,), "cell": (b, 3, 3), "batch": (n,),
            "edge_index": (2, e), "cell_shifts": (e, 3), "edge_reverse": (e,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Graph.{name} has shape {got}, expected {shape}")

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_triplets(self) -> int:
        """Number of triplets: each edge ji pairs with the edges centred on j but its reverse."""
        degree = torch.bincount(self.edge_index[0], minlength=self.positions.shape[0])
        return int((degree.index_select(0, self.edge_index[1]) - 1).sum())

    def triplets(self) -> tuple[Tensor, Tensor]:
        """The triplets as (triplet_kj, triplet_ji) edge indices [T] (see `triplet_indices`)."""
        return triplet_indices(self.edge_index, self.edge_reverse, self.positions.shape[0])

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
    edge_reverse: np.ndarray


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Full periodic neighbour list: edge_index [2,E] (centre, neighbour), shifts [E,3],
    sorted by centre then neighbour."""
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


def reverse_edges(edge_index: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Index of the reverse edge (j, i, -S) of every edge (i, j, S), or -1 where it is absent
    [E] (host arrays; the pairing itself is `reverse_edges_torch`)."""
    i, j = torch.from_numpy(np.ascontiguousarray(edge_index, dtype=np.int64))
    s = torch.from_numpy(np.rint(shifts).astype(np.int64))
    n = int(max(i.max(), j.max())) + 1 if i.numel() else 0
    return reverse_edges_torch(i, j, s, n).numpy()


def reverse_edges_torch(i: Tensor, j: Tensor, s: Tensor, n: int) -> Tensor:
    """Index of the reverse edge (j, i, -S) of every edge (i, j, S) [E], or -1, on the edges'
    device: edges are matched on integer keys (atom pair and image shift) by sorting. `s`:
    integer shifts; `n`: more than the largest atom index."""
    if i.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=i.device)
    reach = int(s.abs().max())
    span = 2 * reach + 1
    if n * n * span**3 >= 2**62:  # ~10^8 atoms, or images thousands of cells away
        raise DataError(f"graph too large to pair its edges ({n} atoms, images up to {reach} "
                        "cells away)")

    def key(a: Tensor, b: Tensor, sh: Tensor) -> Tensor:
        image = ((sh[:, 0] + reach) * span + sh[:, 1] + reach) * span + sh[:, 2] + reach
        return (a * n + b) * span**3 + image

    ranked, order = torch.sort(key(i, j, s), stable=True)
    wanted = key(j, i, -s)
    pos = torch.searchsorted(ranked, wanted).clamp_max_(ranked.numel() - 1)
    found = ranked.index_select(0, pos) == wanted
    return torch.where(found, order.index_select(0, pos), torch.full_like(pos, -1))


def symmetric_edges(edge_index: np.ndarray, shifts: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges that have their reverse, with the reverse index: (edge_index, shifts, reverse).

    A full neighbour list is symmetric in exact arithmetic; an edge whose reverse fell on the
    other side of the cutoff by rounding is dropped (the DimeNet++ envelope and its first
    derivatives are zero at the cutoff, so dropping it changes nothing to rounding)."""
    reverse = reverse_edges(edge_index, shifts)
    keep = reverse >= 0
    if keep.all():
        return edge_index, shifts, reverse
    new_index = np.cumsum(keep) - 1  # the reverse of a kept edge is kept
    return edge_index[:, keep], shifts[keep], new_index[reverse[keep]]


def triplet_indices(edge_index: Tensor, edge_reverse: Tensor, n_atoms: int
                    ) -> tuple[Tensor, Tensor]:
    """All (kj, ji) edge pairs sharing atom j with k != i (atom and image): for each edge
    ji, every edge centred on j except the reverse of ji, on the edges' device.

    `edge_index` must be sorted by centre atom. Returns (triplet_kj, triplet_ji), each [T].
    """
    centre, neighbour = edge_index[0], edge_index[1]
    dev = centre.device
    degree = torch.bincount(centre, minlength=n_atoms)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.cumsum(degree, 0)])
    n_kj = degree.index_select(0, neighbour)  # edges centred on j, for each edge ji
    total = int(n_kj.sum())  # the triplet count: one read
    ji = torch.repeat_interleave(torch.arange(centre.numel(), device=dev), n_kj,
                                 output_size=total)
    start = torch.repeat_interleave(ptr.index_select(0, neighbour), n_kj, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(n_kj, 0) - n_kj, n_kj, output_size=total)
    kj = start + torch.arange(total, device=dev) - first
    keep = kj != edge_reverse.index_select(0, ji)
    return kj[keep], ji[keep]


def _single(atoms: Atoms, cutoff: float) -> _Single:
    if len(atoms) == 0:
        raise DataError("cannot build a graph of an empty structure")
    edge_index, shifts, reverse = symmetric_edges(*neighbour_list(atoms, cutoff))
    cell = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
    return _Single(np.asarray(atoms.positions, dtype=np.float64),
                   np.asarray(atoms.numbers, dtype=np.int64), np.asarray(cell, dtype=np.float64),
                   edge_index, shifts, reverse)


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
        edge_reverse=t(cat([s.edge_reverse + e
                            for s, e in zip(singles, edge_off, strict=True)])),
        cutoff=float(cutoff),
    )


def build_graph(structures: Atoms | Sequence[Atoms], cutoff: float) -> Graph:
    """Batched neighbour graph of one or several structures (float64 on the CPU).

    Use `Graph.to(device, dtype)` to move it. Structures may differ in size and elements.
    """
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures:
        raise DataError("cannot build a graph of zero structures")
    return collate([_single(a, cutoff) for a in structures], cutoff)


class GraphCache:
    """Single-structure graphs built once and batched on demand (training data are static)."""

    def __init__(self, structures: Sequence[Atoms], cutoff: float) -> None:
        self.cutoff = float(cutoff)
        self._singles = [_single(a, self.cutoff) for a in structures]

    def __len__(self) -> int:
        return len(self._singles)

    def batch(self, indices: Sequence[int]) -> Graph:
        """The batched graph of the structures at `indices`."""
        return collate([self._singles[k] for k in indices], self.cutoff)
