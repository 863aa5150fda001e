"""Neighbour graphs built where the positions are (CPU or GPU), without a trip to numpy.

`build_graph` (congener.graph) reads `ase.Atoms` on the host: right for data sets, wasteful in
MD on a GPU, where every rebuild would copy the positions to the host and the graph back.
`device_graph` builds the same `Graph` from tensors on their own device with vesin's torch
interface (`vesin_torch.NeighborList`, which runs on CUDA) and pairs each edge with its reverse
by `congener.graph.reverse_edges_torch`, the mechanism the host path uses too; triplets are
listed on the device by `congener.graph.triplet_indices`. Its edges equal `build_graph`'s, in
the same order (by centre, then neighbour, vesin's order among images), so the two paths give
the same forces.

Host synchronisations: the per-system atom counts are read once per build (to slice the
batch), and the sizes of the kept edges and of the triplet list are data-dependent (one
synchronisation each); no positions leave the device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from congener.errors import DataError
from congener.graph import Graph, reverse_edges_torch


def _neighbours(points: Tensor, box: Tensor, cutoff: float) -> tuple[Tensor, Tensor, Tensor]:
    """Full periodic list of one system on `points.device`: (i, j, S)."""
    from vesin_torch import NeighborList

    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(points=points.to(torch.float64), box=box.to(torch.float64),
                         periodic=True, quantities="ijS")
    return i.to(torch.long), j.to(torch.long), s.to(torch.long)


def _sort_edges(i: Tensor, j: Tensor, s: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Edges sorted by centre, then neighbour, vesin's order kept among the images of one
    pair (a stable sort, as `congener.graph.neighbour_list`'s lexsort)."""
    order = torch.argsort(i * n + j, stable=True)
    return i[order], j[order], s[order]


def device_graph(positions: Tensor, species: Tensor, cell: Tensor, n_atoms: Tensor,
                 cutoff: float) -> Graph:
    """The batched periodic `Graph` of systems given as tensors (positions [N,3] Å, species
    [N], cell [B,3,3] rows, n_atoms [B]) on their device, in positions' dtype."""
    dev = positions.device
    counts = n_atoms.tolist()  # one small read: the systems' sizes
    if not counts or min(counts) < 1:
        raise DataError("cannot build a graph of an empty structure")
    edges, shifts, reverse = [], [], []
    atom_off = edge_off = 0
    for k, (points, box) in enumerate(zip(positions.split(counts), cell, strict=True)):
        n = counts[k]
        i, j, s = _sort_edges(*_neighbours(points, box, cutoff), n)
        rev = reverse_edges_torch(i, j, s, n)
        keep = rev >= 0  # an edge whose reverse fell outside by rounding goes (see graph.py)
        if not bool(keep.all()):
            new_index = torch.cumsum(keep, 0) - 1
            i, j, s, rev = i[keep], j[keep], s[keep], new_index.index_select(0, rev[keep])
        edges.append(torch.stack([i, j]) + atom_off)
        shifts.append(s)
        reverse.append(rev + edge_off)
        atom_off += n
        edge_off += i.numel()
    batch = torch.repeat_interleave(torch.arange(len(counts), device=dev), n_atoms.to(dev))
    return Graph(positions=positions, species=species.to(dev), cell=cell.to(positions.dtype),
                 batch=batch, n_atoms=n_atoms.to(dev), edge_index=torch.cat(edges, 1),
                 cell_shifts=torch.cat(shifts).to(positions.dtype),
                 edge_reverse=torch.cat(reverse), cutoff=float(cutoff))
