"""DimeNet++'s triplets as dense per-atom blocks, and the angular basis on them.

For atom j, the edges kj out of j (centred on j) are the columns of a block and the edges ji
into j its rows, each row at the column of its reverse edge (the reverse of ji = (i, j, S) is
(j, i, -S), centred on j; `Graph.edge_reverse`). A pair (ji, kj) is then a triplet exactly off
the diagonal of the block's valid square (the diagonal pairs ji with its own reverse: k = i,
same image). The angle at j between j->i and j->k comes from the Gram matrix of the unit
vectors of the edges out of j, and the triplet sum of an interaction block,
agg[ji] = sum_kj sum_l cbf[ji, kj, l] h[kj, l, :], is one batched matmul
[n, D, L*D] @ [n, L*D, C]: no triplet-sized gather, product or scatter.

Written by hand: no library lays out DimeNet-style triplets densely (torch_geometric and
chemtrain use triplet lists with gathers and scatters, slower on a CPU; the project's
engineering notes, BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from congener.graph import Graph
from congener.runtime import sync_free


def _join(parts: list[Tensor], dim: int = 0) -> Tensor:
    """The per-group parts as one tensor (no copy for the usual single group)."""
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0]


def _rank_within(keys: Tensor, n: int) -> Tensor:
    """Position of each element among those with the same key, in index order: [len(keys)]."""
    count = torch.bincount(keys, minlength=n)
    start = torch.cumsum(count, 0) - count
    if bool((keys[1:] >= keys[:-1]).all()):  # sorted (edges by centre): no sort needed
        return torch.arange(keys.numel(), device=keys.device) - start.index_select(0, keys)
    order = torch.argsort(keys, stable=True)
    first = start.index_select(0, keys.index_select(0, order))
    return torch.empty_like(keys).scatter_(0, order, torch.arange(keys.numel(),
                                                                   device=keys.device) - first)


def _within_unit(c: Tensor) -> bool:
    """Whether every entry of `c` lies in [-1, 1] (one host read)."""
    if not c.numel():
        return True
    lo, hi = torch.aminmax(c)
    return float(lo) >= -1.0 and float(hi) <= 1.0


class AngularState:
    """Y_l^0 of the triplet angles on the padded per-atom blocks, and its cos-derivatives.

    cos [N, D_in, D_out]; outputs [N, D_in, L, D_out], zero where (ji, kj) is no triplet.
    P_l^(k) from P^(k)_{n+1} = P^(k)_{n-1} + (2n+1) P^(k-1)_n; the mask scales every
    recurrence (they are linear), so no separate multiplication by it is needed.
    """

    def __init__(self, cos: Tensor, mask: Tensor, ynorm: Tensor, norms: list[float]) -> None:
        c = cos.detach()
        self.inside: Tensor | None = None
        if not sync_free(c) and _within_unit(c):  # the usual case: clamp is the identity
            self.c, self.start = c, [mask, mask]
        else:  # |cos| > 1 by rounding: clamp, and clamp's zero derivative outside (every
            # derivative order descends from order 1, whose terms `inside` zeroes there)
            self.inside = (c.abs() <= 1.0).to(c.dtype)
            self.c, self.start = c.clamp(-1.0, 1.0), [mask, mask * self.inside]
        # start: P_0 of order 0, P_1' of order 1 (each scaled by the triplet mask)
        self.ynorm = ynorm.to(cos.dtype).view(-1, 1)
        self.norms = norms  # the same values on the host (no device read per use)
        self.num = ynorm.shape[0]
        self.p: list[list[Tensor]] = []

    def _order(self, k: int) -> list[Tensor]:
        while len(self.p) <= k:
            order, c, num = len(self.p), self.c, self.num
            if order == 0:
                p = [self.start[0], self.start[0] * c]
                for n in range(1, num - 1):
                    p.append(((2 * n + 1) * c * p[n] - n * p[n - 1]) / (n + 1))
            else:
                prev = self.p[order - 1]
                if order == 1 and self.inside is not None:
                    prev = [q * self.inside for q in prev]
                zero = torch.zeros_like(c)
                p = [zero, self.start[1] if order == 1 else zero]
                for n in range(1, num - 1):
                    p.append(p[n - 1] + (2 * n + 1) * prev[n])
            self.p.append(p[:num])
        return self.p[k]

    def derivative(self, k: int) -> Tensor:
        out = torch.stack(self._order(k), dim=2)  # [N, D_in, L, D_out]
        return out.mul_(self.ynorm)

    def contract(self, k: int, grad: Tensor) -> Tensor:
        """sum_l grad[:, :, l, :] * derivative(k)[:, :, l, :] -> [N, D_in, D_out], without
        stacking the derivative (one read of grad; not differentiable: explicit forces)."""
        p, norms = self._order(k), self.norms
        out = None
        for order in range(k, self.num):  # P_l^(k) = 0 for l < k
            if out is None:
                out = grad[:, :, order] * p[order].mul(norms[order])
            else:
                out.addcmul_(grad[:, :, order], p[order], value=norms[order])
        return out if out is not None else torch.zeros_like(self.c)


class AngularDerivative(torch.autograd.Function):
    """k-th cos-derivative of the masked angular basis, differentiable to any order."""

    @staticmethod
    def forward(ctx, cos: Tensor, order: int, state: AngularState) -> Tensor:
        ctx.order, ctx.state = order, state
        ctx.save_for_backward(cos)
        return state.derivative(order)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (cos,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        nxt = AngularDerivative.apply(cos, ctx.order + 1, ctx.state)
        return (grad * nxt).sum(2), None, None


def _degree_buckets(degree: list[int], max_buckets: int = 4) -> list[int]:
    """Split atoms sorted by degree into <= max_buckets groups minimising the padded block
    size sum_b n_b D_b^2 plus a cost per group (the larger of 4000 cells and 1/8 of the
    one-group size: each group costs extra small ops); returns the group ends (sorted order)."""
    overhead = max(4000, len(degree) * max(degree) ** 2 // 8)
    values = sorted(set(degree))
    counts = [0] * len(values)
    where = {v: k for k, v in enumerate(values)}
    for d in degree:
        counts[where[d]] += 1
    ends = [0]
    for c in counts:
        ends.append(ends[-1] + c)  # atoms with degree <= values[k] end at ends[k + 1]
    n = len(values)
    inf = float("inf")
    # best[k][v]: cost of the atoms up to value v in k groups, with the split it came from
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    split = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for v in range(1, n + 1):
            for u in range(v):
                cost = best[k - 1][u] + (ends[v] - ends[u]) * values[v - 1] ** 2 + overhead
                if cost < best[k][v]:
                    best[k][v], split[k][v] = cost, u
    k = min(range(1, max_buckets + 1), key=lambda q: best[q][n])
    cuts, v = [], n
    while k:
        cuts.append(ends[v])
        v, k = split[k][v], k - 1
    return cuts[::-1]


class Triplets:
    """The block layout of one graph's triplets (module docstring), with the padding helpers
    and the angular basis on the blocks. Atoms are grouped by degree (one group for crystals;
    up to 4 for hot or liquid structures, whose degrees vary), each group padded to its
    largest degree D, so that little padding is computed.

    Padded slots: slot (atom j, column c) holds the edge out of j at rank c; `out_slot` [E]
    is each edge's slot, `in_slot` [E] the row of edge ji (its reverse's slot).
    """

    def __init__(self, graph: Graph, n_atoms: int) -> None:
        i, reverse = graph.edge_index[0], graph.edge_reverse
        n_edges, dev = i.numel(), i.device
        if n_edges and int(reverse.min()) < 0:
            raise ValueError("graph has edges without a reverse edge (build it with build_graph)")
        self.n_edges = n_edges
        out_pos = _rank_within(i, n_atoms)
        degree = torch.bincount(i, minlength=n_atoms).clamp_min_(1)
        deg_list = degree.tolist() if n_atoms else [1]
        cuts = _degree_buckets(deg_list)
        arange = torch.arange(n_edges, device=dev)
        if len(cuts) == 1:  # one group, atoms in their own order
            deg = max(deg_list)
            self.groups = [(n_atoms, deg)]
            base = torch.arange(n_atoms, device=dev) * deg
        else:
            order = torch.argsort(degree, stable=True)
            sorted_deg = degree.index_select(0, order).tolist()
            self.groups, starts = [], [0, *cuts[:-1]]
            local_base, offset = [], 0
            for start, end in zip(starts, cuts, strict=True):
                n, deg = end - start, sorted_deg[end - 1]
                self.groups.append((n, deg))
                local_base.append(offset + torch.arange(n, device=dev) * deg)
                offset += n * deg
            base = torch.empty_like(degree).scatter_(0, order, torch.cat(local_base))
        slots = sum(n * d for n, d in self.groups)
        self.out_slot = base.index_select(0, i) + out_pos  # [E]
        self.in_slot = self.out_slot.index_select(0, reverse)  # row of edge ji
        # padded slot -> edge (n_edges = a zero row appended to the gathered tensor)
        self.out_identity = slots == n_edges and bool((self.out_slot == arange).all())
        self.out_gather = torch.full((slots,), n_edges, dtype=torch.long,
                                     device=dev).scatter_(0, self.out_slot, arange)
        valid = [v.view(n, d) for v, (n, d) in
                 zip((self.out_gather < n_edges).split([n * d for n, d in self.groups]),
                     self.groups, strict=True)]
        self.mask = [(v.unsqueeze(2) & v.unsqueeze(1)).masked_fill_(
            torch.eye(v.shape[1], dtype=torch.bool, device=dev), False) for v in valid]
        self.cbf: list[Tensor] = []

    def reuse(self) -> Triplets:
        """A fresh `Triplets` on the same layout (no host work): for a new forward pass over
        the same edges at other positions (`DimeNetPP.prepare`)."""
        out = copy.copy(self)
        out.cbf, out.angles, out.units = [], [], []
        return out

    def to(self, device: torch.device | str) -> Triplets:
        """The layout on `device` (angles are not moved: set them there)."""
        out = self.reuse()
        for name in ("out_slot", "in_slot", "out_gather"):
            setattr(out, name, getattr(self, name).to(device))
        out.mask = [m.to(device) for m in self.mask]
        return out

    def _split(self, flat: Tensor, shape: tuple[int, ...]) -> list[Tensor]:
        """[slots, ...] -> per group [n, D, ...]."""
        parts = flat.split([n * d for n, d in self.groups]) if len(self.groups) > 1 else [flat]
        return [p.view(n, d, *shape) for p, (n, d) in zip(parts, self.groups, strict=True)]

    def pad_out(self, x: Tensor) -> list[Tensor]:
        """[E, ...] per edge kj -> per group [n, D, ...], zero-padded."""
        if self.out_identity:
            return self._split(x, x.shape[1:])
        flat = x.reshape(self.n_edges, math.prod(x.shape[1:]))
        flat = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])
        return self._split(flat.index_select(0, self.out_gather), x.shape[1:])

    def unpad_out(self, parts: list[Tensor]) -> Tensor:
        """Inverse of `pad_out`: per group [n, D, ...] -> [E, ...] (padding dropped)."""
        shape = parts[0].shape[2:]
        flat = _join([q.reshape(-1, *shape) for q in parts])
        return flat if self.out_identity else flat.index_select(0, self.out_slot)

    def set_angles(self, unit: Tensor, ynorm: Tensor, norms: list[float]) -> None:
        """unit [E, 3]: edge directions. Sets `cbf`, per group the masked angular basis
        [n, D_in, L * D_out] of the angle at j between j->i and j->k (the Gram matrix of the
        directions of the edges out of j; j->i is the reverse of edge ji), and `angles`, the
        per-group `AngularState` (its cos-derivatives); `units`, the padded directions."""
        self.cbf, self.angles, self.units = [], [], self.pad_out(unit)
        for u, mask in zip(self.units, self.mask, strict=True):
            mask = mask.to(unit.dtype)
            # symmetrised: bmm's rounding can differ between (r, c) and (c, r), and the blocks'
            # symmetry saves a transposed read in the explicit gradient (dimenet_grad.py);
            # masked: the diagonal (|u|^2, 1 + rounding) would send every call down the clamp path
            gram = torch.bmm(u, u.transpose(1, 2))
            cos = (gram + gram.transpose(1, 2)).mul_(0.5 * mask)  # [n, D_in, D_out]
            state = AngularState(cos, mask, ynorm, norms)
            cbf = AngularDerivative.apply(cos, 0, state)  # [n, D_in, L, D_out]
            self.cbf.append(cbf.view(cbf.shape[0], cbf.shape[1], -1))
            self.angles.append(state)

    def radial(self, rad: Tensor) -> list[Tensor]:
        """[L, R, E] per edge kj -> per group [n, L, D_out, R] (once per forward)."""
        n_l, n_r = rad.shape[0], rad.shape[1]
        if not self.out_identity:
            rad = torch.cat([rad, rad.new_zeros(n_l, n_r, 1)], 2).index_select(2, self.out_gather)
        parts = rad.split([n * d for n, d in self.groups], 2) if len(self.groups) > 1 else [rad]
        return [p.view(n_l, n_r, n, d).permute(2, 0, 3, 1).contiguous()
                for p, (n, d) in zip(parts, self.groups, strict=True)]

    def unpad_radial(self, parts: list[Tensor]) -> Tensor:
        """Inverse of `radial`: per group [n, L, D, R] -> [L, R, E]."""
        flat = _join([q.permute(1, 3, 0, 2).reshape(q.shape[1], q.shape[3], -1)
                      for q in parts], 2)
        return flat if self.out_identity else flat.index_select(2, self.out_slot)

    def messages(self, sbf: list[Tensor], x_kj: list[Tensor]) -> list[Tensor]:
        """sbf per group [n, L, D_out, C] times x_kj per group [n, D_out, C] (the edges kj,
        padded): per group [n, L * D_out, C]."""
        return [(s * x.unsqueeze(1)).view(x.shape[0], -1, x.shape[2])
                for s, x in zip(sbf, x_kj, strict=True)]

    def aggregate(self, messages: list[Tensor]) -> Tensor:
        """The triplet sum into each edge ji: cbf @ messages per group, [E, C]."""
        c = messages[0].shape[-1]
        out = [torch.bmm(cbf, h).view(-1, c) for cbf, h in zip(self.cbf, messages, strict=True)]
        return _join(out).index_select(0, self.in_slot)

    def pad_rows(self, g: Tensor) -> list[Tensor]:
        """Inverse of `aggregate`'s last step for gradients: [E, C] per edge ji -> per group
        rows [n, D_in, C] (zero on padding)."""
        rows = g.new_zeros(self.out_gather.numel(), g.shape[1]).index_copy_(0, self.in_slot, g)
        return self._split(rows, g.shape[1:])
