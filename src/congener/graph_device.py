"""Neighbour graphs built where the positions are (CPU or GPU), without a trip to numpy.

`build_graph` (congener.graph) reads `ase.Atoms` on the host: right for data sets, wasteful in
MD on a GPU, where every rebuild would copy the positions to the host and the graph back.
`device_graph` builds the same `Graph` from tensors on their own device with vesin's torch
interface (`vesin.torch.NeighborList`, which runs on CUDA), and pairs each edge with its reverse
and lists triplets with torch operations. Its edges equal `build_graph`'s, in the same order
(sorted by centre, then neighbour, then image), so the two paths give the same forces.

Host synchronisations: the per-system atom counts are read once per build (to slice the
batch), and the sizes of the kept edges and of the triplet list are data-dependent (one
synchronisation each); no positions leave the device. The reverse pairing is written by hand
as in `congener.graph` (no library pairs periodic DimeNet-style edges with their reverses).
"""

from __future__ import annotations

import torch
from torch import Tensor

from congener.errors import DataError
from congener.graph import Graph


def _neighbours(points: Tensor, box: Tensor, cutoff: float) -> tuple[Tensor, Tensor, Tensor]:
    """Full periodic list of one system on `points.device`: (i, j, S)."""
    from vesin_torch import NeighborList

    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(points=points.to(torch.float64), box=box.to(torch.float64),
                         periodic=True, quantities="ijS")
    return i.to(torch.long), j.to(torch.long), s.to(torch.long)


def _sort_edges(i: Tensor, j: Tensor, s: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Edges sorted by centre, neighbour, then image (the order of `congener.graph`, which
    sorts by centre and neighbour with vesin's image order kept: a stable sort of the same)."""
    order = torch.argsort(i * n + j, stable=True)
    return i[order], j[order], s[order]


def reverse_edges_torch(i: Tensor, j: Tensor, s: Tensor, n: int) -> Tensor:
    """Index of the reverse edge (j, i, -S) of every edge (i, j, S), or -1 [E] (the torch
    twin of `congener.graph.reverse_edges`: integer keys, sorted, searched)."""
    if i.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=i.device)
    reach = int(s.abs().max())
    span = 2 * reach + 1
    if n * n * span**3 >= 2**62:
        raise DataError(f"graph too large to pair its edges ({n} atoms, images up to {reach} "
                        "cells away)")

    def key(a: Tensor, b: Tensor, sh: Tensor) -> Tensor:
        image = ((sh[:, 0] + reach) * span + sh[:, 1] + reach) * span + sh[:, 2] + reach
        return (a * n + b) * span**3 + image

    forward = key(i, j, s)
    ranked, order = torch.sort(forward, stable=True)
    wanted = key(j, i, -s)
    pos = torch.searchsorted(ranked, wanted).clamp_max_(ranked.numel() - 1)
    found = ranked.index_select(0, pos) == wanted
    return torch.where(found, order.index_select(0, pos), torch.full_like(pos, -1))


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


def triplets_torch(edge_index: Tensor, edge_reverse: Tensor, n_atoms: int
                   ) -> tuple[Tensor, Tensor]:
    """All (kj, ji) edge pairs sharing atom j with k != i (atom and image), on the edges'
    device: the torch twin of `congener.graph.triplets` (`edge_index` sorted by centre)."""
    centre, neighbour = edge_index[0], edge_index[1]
    dev = centre.device
    degree = torch.bincount(centre, minlength=n_atoms)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), torch.cumsum(degree, 0)])
    n_kj = degree.index_select(0, neighbour)
    total = int(n_kj.sum())  # the triplet count: one read
    ji = torch.repeat_interleave(torch.arange(centre.numel(), device=dev), n_kj,
                                 output_size=total)
    start = torch.repeat_interleave(ptr.index_select(0, neighbour), n_kj, output_size=total)
    first = torch.repeat_interleave(torch.cumsum(n_kj, 0) - n_kj, n_kj, output_size=total)
    kj = start + torch.arange(total, device=dev) - first
    keep = kj != edge_reverse.index_select(0, ji)
    return kj[keep], ji[keep]
