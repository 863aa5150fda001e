"""DimeNet++ (Gasteiger et al. 2020, "Fast and uncertainty-aware directional message passing").

Maps a `Graph` to per-atom energies. Follows the published architecture (embedding block,
interaction blocks with down/up projection, output blocks, swish) and its parameter names, with
exact reformulations for speed on a CPU (results equal the direct form to float rounding):

- Triplets as dense per-atom blocks (`_Triplets`): for atom j, the edges ji into j and the
  edges kj out of j form a [D, D] block (D = largest degree, zero-padded; cbf is zero where
  (ji, kj) is no triplet of the graph: on the diagonal, k = i). The message sum of a block,
  agg[ji] = sum_kj sum_l cbf[ji, kj, l] sbf[kj, l, :] x_kj[kj, :], is one batched matmul
  [N, D, L*D] @ [N, L*D, C]; no triplet-sized gather, product or scatter is recorded.
- The angles come from a batched Gram matrix of unit edge vectors; the angular basis Y_l^0
  and the spherical radial factor (float64 spherical Bessel functions) are autograd Functions
  whose derivatives of any order are closed forms (`_AngularDerivative`,
  `basis._RadialDerivative`), instead of ~100 recorded small ops each.
- The spherical basis is linear in its radial factor: lin_sbf2 . lin_sbf1 is applied per edge
  ([E, L, R] -> [E, L, C]), lin_rbf2 . lin_rbf1 as one [hidden, R] matrix.
- The output blocks' atom-wise MLPs run for all blocks at once as batched matmuls.
- Gathers use `index_select`, scatters `index_add_`/`scatter_` (no advanced-index assignment:
  its CPU kernel stalls for milliseconds when the other core is busy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from congener.errors import ConfigError
from congener.graph import Graph
from congener.models.basis import BesselBasis, SphericalBasis

MAX_Z = 94


@dataclass(frozen=True)
class DimeNetConfig:
    """DimeNet++ sizes. Defaults: the paper's "one quarter of the original" model."""

    cutoff: float = 5.0
    hidden: int = 32
    out_emb: int = 64
    int_emb: int = 16
    basis_emb: int = 2
    num_blocks: int = 4
    num_spherical: int = 7
    num_radial: int = 6
    envelope_exponent: int = 5
    num_before_skip: int = 1
    num_after_skip: int = 2
    num_output_layers: int = 3

    def __post_init__(self) -> None:
        if self.cutoff <= 0:
            raise ConfigError(f"model.cutoff must be > 0 (got {self.cutoff})")
        for name, value in asdict(self).items():
            if name != "cutoff" and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"model.{name} must be a positive integer (got {value!r})")


def _swish(x: Tensor) -> Tensor:
    return F.silu(x)


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


class _AngularState:
    """Y_l^0 of the triplet angles on the padded per-atom blocks, and its cos-derivatives.

    cos [N, D_in, D_out]; outputs [N, D_in, L, D_out], zero where (ji, kj) is no triplet.
    P_l^(k) from P^(k)_{n+1} = P^(k)_{n-1} + (2n+1) P^(k-1)_n; the mask scales every
    recurrence (they are linear), so no separate multiplication by it is needed.
    """

    def __init__(self, cos: Tensor, mask: Tensor, ynorm: Tensor) -> None:
        c = cos.detach()
        lo, hi = torch.aminmax(c) if c.numel() else (c.new_zeros(()), c.new_zeros(()))
        if float(lo) >= -1.0 and float(hi) <= 1.0:  # the usual case: clamp is the identity
            self.c, self.start = c, [mask, mask]
        else:  # |cos| > 1 by rounding: clamp, and clamp's zero derivative outside
            inside = (c.abs() <= 1.0).to(c.dtype)
            self.c, self.start = c.clamp(-1.0, 1.0), [mask, mask * inside]
        # start: P_0 of order 0, P_1' of order 1 (each scaled by the triplet mask)
        self.ynorm = ynorm.to(cos.dtype).view(-1, 1)
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
                zero = torch.zeros_like(c)
                p = [zero, self.start[1] if order == 1 else zero]
                for n in range(1, num - 1):
                    p.append(p[n - 1] + (2 * n + 1) * prev[n])
            self.p.append(p[:num])
        return self.p[k]

    def derivative(self, k: int) -> Tensor:
        out = torch.stack(self._order(k), dim=2)  # [N, D_in, L, D_out]
        return out.mul_(self.ynorm)


class _AngularDerivative(torch.autograd.Function):
    """k-th cos-derivative of the masked angular basis, differentiable to any order."""

    @staticmethod
    def forward(ctx, cos: Tensor, order: int, state: _AngularState) -> Tensor:
        ctx.order, ctx.state = order, state
        ctx.save_for_backward(cos)
        return state.derivative(order)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (cos,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        nxt = _AngularDerivative.apply(cos, ctx.order + 1, ctx.state)
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


class _Triplets:
    """Triplets as dense per-atom blocks: for atom j, columns = edges kj out of j (centred on
    j), rows = edges ji into j, each row at the column of its reverse edge (the reverse of
    ji = (i, j, S) is (j, i, -S), centred on j); blocks zero-padded to the largest degree D of
    their group. Atoms are grouped by degree (one group for crystals; up to 4 for hot or
    liquid structures, whose degrees vary) so that little padding is computed.

    Then (ji, kj) is a triplet exactly off the diagonal of the valid square of the block (the
    diagonal pairs ji with its own reverse: k = i, same image), the angle at j between j->i
    and j->k comes from the Gram matrix of the unit vectors of the edges out of j, and the
    triplet sum agg[ji] = sum_{t: ji} sum_l cbf[t, l] h[kj, l, :] is one batched matmul per
    group and block, [n, D, L*D] @ [n, L*D, C], with cbf zero off the triplets.
    """

    def __init__(self, graph: Graph, n_atoms: int) -> None:
        i, reverse = graph.edge_index[0], graph.edge_reverse
        n_edges, dev = i.numel(), i.device
        if n_edges and int(reverse.min()) < 0:
            raise ValueError("graph has edges without a reverse edge (build it with build_graph)")
        self.n_atoms, self.n_edges = n_atoms, n_edges
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

    def set_angles(self, unit: Tensor, sbf: SphericalBasis) -> None:
        """unit [E, 3]: edge directions. cos of the angle at j between j->i and j->k: the Gram
        matrix of the directions of the edges out of j (j->i is the reverse of edge ji)."""
        self.cbf = []
        for u, mask in zip(self.pad_out(unit), self.mask, strict=True):
            mask = mask.to(unit.dtype)
            # masked: the diagonal (|u|^2, 1 + rounding) would send every call down the clamp path
            cos = torch.bmm(u, u.transpose(1, 2)).mul_(mask)  # [n, D_in, D_out]
            state = _AngularState(cos, mask, sbf.ynorm)
            cbf = _AngularDerivative.apply(cos, 0, state)  # [n, D_in, L, D_out]
            self.cbf.append(cbf.view(cbf.shape[0], cbf.shape[1], -1))

    def radial(self, rad: Tensor) -> list[Tensor]:
        """[L, E, R] per edge kj -> per group [n, L, D_out, R] (once per forward)."""
        n_l, n_r = rad.shape[0], rad.shape[2]
        if not self.out_identity:
            rad = torch.cat([rad, rad.new_zeros(n_l, 1, n_r)], 1).index_select(1, self.out_gather)
        parts = rad.split([n * d for n, d in self.groups], 1) if len(self.groups) > 1 else [rad]
        return [p.view(n_l, n, d, n_r).transpose(0, 1).contiguous()
                for p, (n, d) in zip(parts, self.groups, strict=True)]

    def aggregate(self, sbf: list[Tensor], x_kj: Tensor) -> Tensor:
        """sbf per group [n, L, D_out, C] times x_kj [E, C] per edge kj, summed over triplets
        into edge ji: [E, C]."""
        c = x_kj.shape[-1]
        out = []
        for cbf, s, x in zip(self.cbf, sbf, self.pad_out(x_kj), strict=True):
            h = s * x.unsqueeze(1)  # [n, L, D_out, C]
            out.append(torch.bmm(cbf, h.reshape(h.shape[0], -1, c)).view(-1, c))  # [n*D_in, C]
        agg = torch.cat(out) if len(out) > 1 else out[0]
        return agg.index_select(0, self.in_slot)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + _swish(self.lin2(_swish(self.lin1(x))))


class _Embedding(nn.Module):
    def __init__(self, cfg: DimeNetConfig) -> None:
        super().__init__()
        self.emb = nn.Embedding(MAX_Z + 1, cfg.hidden)
        nn.init.uniform_(self.emb.weight, -3**0.5, 3**0.5)
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden)
        self.lin = nn.Linear(3 * cfg.hidden, cfg.hidden)

    def forward(self, species: Tensor, rbf_proj: Tensor, i: Tensor, j: Tensor) -> Tensor:
        """rbf_proj [E, hidden]: lin_rbf(rbf), computed with the other rbf projections."""
        x = self.emb(species)
        rbf = _swish(rbf_proj)
        return _swish(self.lin(torch.cat([x.index_select(0, i), x.index_select(0, j), rbf], -1)))


class _Interaction(nn.Module):
    def __init__(self, cfg: DimeNetConfig) -> None:
        super().__init__()
        h, b, e = cfg.hidden, cfg.basis_emb, cfg.int_emb
        self.num_spherical, self.num_radial, self.basis_emb = cfg.num_spherical, cfg.num_radial, b
        self.lin_rbf1 = nn.Linear(cfg.num_radial, b, bias=False)
        self.lin_rbf2 = nn.Linear(b, h, bias=False)
        self.lin_sbf1 = nn.Linear(cfg.num_spherical * cfg.num_radial, b, bias=False)
        self.lin_sbf2 = nn.Linear(b, e, bias=False)
        self.lin_kj, self.lin_ji = nn.Linear(h, h), nn.Linear(h, h)
        self.lin_down = nn.Linear(h, e, bias=False)
        self.lin_up = nn.Linear(e, h, bias=False)
        self.before_skip = nn.Sequential(*[_Residual(h) for _ in range(cfg.num_before_skip)])
        self.lin = nn.Linear(h, h)
        self.after_skip = nn.Sequential(*[_Residual(h) for _ in range(cfg.num_after_skip)])

    def rbf_weight(self) -> Tensor:
        """lin_rbf2 . lin_rbf1 as one map of the radial basis: [hidden, num_radial]."""
        return self.lin_rbf2.weight @ self.lin_rbf1.weight

    def sbf_kernel(self) -> Tensor:
        """lin_sbf2 . lin_sbf1 as one map of the radial factor: [L, R, int_emb]."""
        w = self.lin_sbf1.weight.view(self.basis_emb, self.num_spherical, self.num_radial)
        return torch.einsum("blr,cb->lrc", w, self.lin_sbf2.weight)

    def forward(self, m: Tensor, rbf_proj: Tensor, sbf: list[Tensor], tri: _Triplets
                ) -> Tensor:
        """rbf_proj [E, hidden]: lin_rbf2(lin_rbf1(rbf)); sbf per atom group [n, L, D, int_emb]:
        the spherical basis' radial factor of edges kj through lin_sbf2 . lin_sbf1, padded."""
        x_ji, x_kj = _swish(self.lin_ji(m)), _swish(self.lin_kj(m))
        x_kj = _swish(self.lin_down(x_kj * rbf_proj))  # [E, int_emb]
        h = x_ji + _swish(self.lin_up(tri.aggregate(sbf, x_kj)))
        h = self.before_skip(h)
        h = _swish(self.lin(h)) + m
        return self.after_skip(h)


class _Output(nn.Module):
    def __init__(self, cfg: DimeNetConfig) -> None:
        super().__init__()
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden, bias=False)
        self.lin_up = nn.Linear(cfg.hidden, cfg.out_emb, bias=False)
        self.lins = nn.ModuleList(nn.Linear(cfg.out_emb, cfg.out_emb)
                                  for _ in range(cfg.num_output_layers))
        self.lin = nn.Linear(cfg.out_emb, 1, bias=False)
        nn.init.zeros_(self.lin.weight)


def _outputs(blocks: nn.ModuleList, atom_sums: list[Tensor]) -> Tensor:
    """The output blocks' atom-wise MLPs, all blocks at once (batched matmuls): [N]."""
    x = torch.stack(atom_sums)  # [blocks, N, hidden]
    x = torch.bmm(x, torch.stack([b.lin_up.weight for b in blocks]).transpose(1, 2))
    for k in range(len(blocks[0].lins)):
        weight = torch.stack([b.lins[k].weight for b in blocks]).transpose(1, 2)
        bias = torch.stack([b.lins[k].bias for b in blocks]).unsqueeze(1)
        x = _swish(torch.baddbmm(bias, x, weight))
    x = torch.bmm(x, torch.stack([b.lin.weight for b in blocks]).transpose(1, 2))
    return x.sum(0).squeeze(-1)


class DimeNetPP(nn.Module):
    """DimeNet++: `Graph` (with positions/cell possibly strained) -> atomic energies [N] (eV)."""

    def __init__(self, cfg: DimeNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DimeNetConfig()
        c = self.cfg
        self.rbf = BesselBasis(c.num_radial, c.cutoff, c.envelope_exponent)
        self.sbf = SphericalBasis(c.num_spherical, c.num_radial, c.cutoff, c.envelope_exponent)
        self.embedding = _Embedding(c)
        self.interactions = nn.ModuleList(_Interaction(c) for _ in range(c.num_blocks))
        self.outputs = nn.ModuleList(_Output(c) for _ in range(c.num_blocks + 1))

    @property
    def cutoff(self) -> float:
        return self.cfg.cutoff

    def forward(self, graph: Graph, positions: Tensor, cell: Tensor) -> Tensor:
        """Per-atom energies [N] for the given (differentiable) positions [N,3] and cell [B,3,3]."""
        i, j = graph.edge_index[0], graph.edge_index[1]
        n = positions.shape[0]
        vec = graph.edge_vectors(positions, cell)  # [E,3], x_j - x_i
        dist = vec.norm(dim=-1)
        tri = _Triplets(graph, n)
        tri.set_angles(vec / dist.unsqueeze(-1), self.sbf)
        rbf = self.rbf(dist)
        rad = tri.radial(self.sbf.radial_by_l(dist))  # per group [n, L, D, R]
        m = self.embedding(graph.species, self.embedding.lin_rbf(rbf), i, j)
        atom_sums = []
        for k, out in enumerate(self.outputs):
            if k:
                blk = self.interactions[k - 1]
                kernel = blk.sbf_kernel()
                sbf = [torch.matmul(r, kernel) for r in rad]  # per group [n, L, D, C]
                m = blk(m, F.linear(rbf, blk.rbf_weight()), sbf, tri)
            x = out.lin_rbf(rbf) * m
            atom_sums.append(x.new_zeros(n, x.shape[1]).index_add_(0, i, x))
        return _outputs(self.outputs, atom_sums)
