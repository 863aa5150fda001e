"""DimeNet++ in TorchScript: a trained `DimeNetPP`'s weights, evaluated on a plain edge list.

`DimeNetPP` (models/dimenet.py) takes congener's `Graph` dataclass and evaluates its bases and
triplet sums through autograd Functions with hand-written derivatives and Python-side state;
none of that compiles with TorchScript. `ScriptDimeNet` computes the same function in plain
differentiable tensor ops (first derivatives by autograd, as engines take forces and stress):

- edges are (centre i, neighbour j, image shift S, vector x_j - x_i + S @ cell), any order;
- triplets are listed explicitly (for edge ji, every edge kj centred on j except the reverse of
  ji: k == i with S_kj == -S_ji), as torch_geometric's DimeNet++ does, instead of congener's
  padded per-atom blocks (`models.triplets`);
- the spherical basis is formed per triplet and projected for all blocks in one matmul (as
  torch_geometric does), not applied to per-atom blocks;
- the spherical basis' radial factor is evaluated directly (upward recurrence, power series
  below max(0.5, l/2): `basis.spherical_jn`) in float64, as congener does.

Written by hand: no library evaluates DimeNet++ in TorchScript on periodic edge lists
(torch_geometric's DimeNetPlusPlus builds its own non-periodic radius graph).
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from congener.models.dimenet import DimeNetPP, _Interaction, _Residual


def _copy(linear: nn.Linear) -> nn.Linear:
    """A detached copy of a linear layer (same dtype and device)."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    dtype=linear.weight.dtype, device=linear.weight.device)
    out.load_state_dict(linear.state_dict())
    return out.requires_grad_(False)


def edge_triplets(first: Tensor, second: Tensor, shifts: Tensor, n_atoms: int
                  ) -> tuple[Tensor, Tensor]:
    """Triplets (kj, ji) of a full edge list, [T] each: for each edge ji = (i, j, S), every
    edge kj = (j, k, S') but its reverse (k == i and S' == -S). Edges need not be sorted."""
    order = torch.argsort(first, stable=True)
    degree = torch.bincount(first, minlength=n_atoms)
    start = torch.cumsum(degree, 0) - degree
    n_kj = degree.index_select(0, second)  # edges centred on j, per edge ji
    ji = torch.arange(first.numel(), device=first.device).repeat_interleave(n_kj)
    begin = (torch.cumsum(n_kj, 0) - n_kj).repeat_interleave(n_kj)
    offset = torch.arange(ji.numel(), device=first.device) - begin
    kj = order.index_select(0, start.index_select(0, second.index_select(0, ji)) + offset)
    back = (second.index_select(0, kj) == first.index_select(0, ji)) & (
        shifts.index_select(0, kj) == -shifts.index_select(0, ji)).all(1)
    keep = torch.logical_not(back).nonzero().squeeze(1)
    return kj.index_select(0, keep), ji.index_select(0, keep)


def _envelope(x: Tensor, exponent: int) -> Tensor:
    """DimeNet's polynomial envelope times 1/x (as `basis.envelope`), zero for x >= 1."""
    p = exponent + 1
    a = -(p + 1) * (p + 2) / 2.0
    b = float(p * (p + 2))
    c = -p * (p + 1) / 2.0
    xp = x.pow(p - 1)
    value = 1.0 / x + a * xp + b * xp * x + c * xp * x * x
    return torch.where(x < 1.0, value, torch.zeros_like(x))


def _spherical_jn(order: int, x: Tensor, double_factorial: float) -> Tensor:
    """j_l(x) for x > 0 as `basis.spherical_jn`: upward recurrence, or an 8-term power series
    below x = max(0.5, l/2); each branch sees safe inputs, so gradients stay finite."""
    threshold = max(0.5, order / 2.0)
    small = x < threshold
    xs = torch.where(small, x, torch.zeros_like(x))
    xl = torch.where(small, torch.full_like(x, threshold), x)
    j_prev = torch.sin(xl) / xl
    j = torch.sin(xl) / (xl * xl) - torch.cos(xl) / xl
    rec = j_prev if order == 0 else j
    for n in range(1, order):
        j_prev, j = j, (2 * n + 1) / xl * j - j_prev
        rec = j
    term = xs.pow(order) / double_factorial
    series = term
    for m in range(7):
        term = term * (-0.5 * xs * xs) / ((m + 1) * (2 * order + 2 * m + 3))
        series = series + term
    return torch.where(small, series, rec)


class _ScriptResidual(nn.Module):
    def __init__(self, res: _Residual) -> None:
        super().__init__()
        self.lin1, self.lin2 = _copy(res.lin1), _copy(res.lin2)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.silu(self.lin2(F.silu(self.lin1(x))))


class _ScriptInteraction(nn.Module):
    """One interaction block; lin_rbf2 . lin_rbf1 as one map (linear layers without bias:
    the same function). lin_sbf2 . lin_sbf1 is applied by `ScriptDimeNet` for all blocks."""

    def __init__(self, blk: _Interaction) -> None:
        super().__init__()
        self.register_buffer("rbf_weight", blk.rbf_weight().detach().clone())  # [hidden, R]
        self.register_buffer("down", blk.lin_down.weight.detach().clone())  # [int_emb, hidden]
        self.register_buffer("up", blk.lin_up.weight.detach().clone())  # [hidden, int_emb]
        self.lin_ji, self.lin_kj, self.lin = _copy(blk.lin_ji), _copy(blk.lin_kj), _copy(blk.lin)
        self.before_skip = nn.ModuleList([_ScriptResidual(r) for r in blk.before_skip])
        self.after_skip = nn.ModuleList([_ScriptResidual(r) for r in blk.after_skip])

    def forward(self, m: Tensor, rbf: Tensor, sbf: Tensor, kj: Tensor, ji: Tensor) -> Tensor:
        """m [E, hidden], rbf [E, R], sbf [T, int_emb] (the block's projected spherical basis
        per triplet) -> m [E, hidden]."""
        x_kj = F.silu(F.linear(F.silu(self.lin_kj(m)) * F.linear(rbf, self.rbf_weight),
                               self.down))  # [E, int_emb]
        msg = x_kj.index_select(0, kj) * sbf
        agg = msg.new_zeros(m.shape[0], msg.shape[1]).index_add_(0, ji, msg)
        h = F.silu(self.lin_ji(m)) + F.silu(F.linear(agg, self.up))
        for res in self.before_skip:
            h = res(h)
        h = F.silu(self.lin(h)) + m
        for res in self.after_skip:
            h = res(h)
        return h


class _ScriptOutput(nn.Module):
    def __init__(self, out: nn.Module) -> None:
        super().__init__()
        self.register_buffer("rbf_weight", out.lin_rbf.weight.detach().clone())
        self.register_buffer("up", out.lin_up.weight.detach().clone())
        self.lins = nn.ModuleList([_copy(lin) for lin in out.lins])
        self.register_buffer("final", out.lin.weight.detach().clone())

    def forward(self, m: Tensor, rbf: Tensor, centre: Tensor, n_atoms: int) -> Tensor:
        """Atomic energies [N] read from the messages m [E, hidden]."""
        x = F.linear(rbf, self.rbf_weight) * m
        x = F.linear(x.new_zeros(n_atoms, x.shape[1]).index_add_(0, centre, x), self.up)
        for lin in self.lins:
            x = F.silu(lin(x))
        return F.linear(x, self.final).squeeze(1)


class ScriptDimeNet(nn.Module):
    """DimeNet++ atomic energies (eV, reference energies excluded) from an edge list; the
    weights of a trained `DimeNetPP`, copied (see the module doc)."""

    double_factorials: list[float]  # (2l + 1)!! per angular order l

    def __init__(self, net: DimeNetPP) -> None:
        super().__init__()
        cfg = net.cfg
        self.cutoff = float(cfg.cutoff)
        self.envelope_exponent = int(cfg.envelope_exponent)
        self.num_spherical = int(cfg.num_spherical)
        self.register_buffer("freq", net.rbf.freq.detach().clone())
        sbf = net.sbf
        self.register_buffer("zeros", sbf.zeros.detach().clone())  # [L, R], float64
        self.register_buffer("norm", sbf.norm.detach().clone())  # [L, R], float64
        self.register_buffer("ynorm", sbf.ynorm.detach().clone())  # [L], float64
        self.double_factorials = [
            float(math.prod(range(1, 2 * order + 2, 2))) for order in range(cfg.num_spherical)]
        emb = net.embedding
        self.register_buffer("emb", emb.emb.weight.detach().clone())  # [Z + 1, hidden]
        self.emb_rbf, self.emb_lin = _copy(emb.lin_rbf), _copy(emb.lin)
        self.interactions = nn.ModuleList([_ScriptInteraction(b) for b in net.interactions])
        # lin_sbf2 . lin_sbf1 of every block side by side: [L * R, blocks * int_emb]
        sbf = [b.lin_sbf2.weight.detach() @ b.lin_sbf1.weight.detach() for b in net.interactions]
        self.register_buffer("sbf_weight", torch.cat(sbf, 0).t().contiguous())
        self.int_emb = int(cfg.int_emb)
        self.first_output = _ScriptOutput(net.outputs[0])  # reads the embedding
        self.outputs = nn.ModuleList([_ScriptOutput(o) for o in net.outputs[1:]])

    def radial(self, dist: Tensor) -> Tensor:
        """The spherical basis' radial factor [E, L, R], computed in float64."""
        x = (dist.to(torch.float64) / self.cutoff).unsqueeze(1)  # [E, 1]
        env = _envelope(x, self.envelope_exponent)
        parts = [_spherical_jn(order, self.zeros[order] * x, self.double_factorials[order])
                 for order in range(self.num_spherical)]
        return (torch.stack(parts, 1) * self.norm * env.unsqueeze(2)).to(dist.dtype)

    def angular(self, cos: Tensor) -> Tensor:
        """Y_l^0 of the triplet angles, [T, L] (Legendre recurrence)."""
        p = [torch.ones_like(cos), cos]
        for n in range(1, self.num_spherical - 1):
            p.append(((2 * n + 1) * cos * p[n] - n * p[n - 1]) / (n + 1))
        return torch.stack(p[:self.num_spherical], 1) * self.ynorm.to(cos.dtype)

    def forward(self, types: Tensor, first: Tensor, second: Tensor, shifts: Tensor,
                vectors: Tensor) -> Tensor:
        """Atomic energies [N] (eV) of atoms with atomic numbers `types` [N] and full-list
        edges first -> second [E] through image `shifts` [E, 3], `vectors` [E, 3] (Å, second
        minus first); edges at or beyond the cutoff are dropped."""
        n_atoms = types.shape[0]
        inside = (vectors.detach().square().sum(1) < self.cutoff ** 2).nonzero().squeeze(1)
        first, second = first.index_select(0, inside), second.index_select(0, inside)
        vectors = vectors.index_select(0, inside)
        kj, ji = edge_triplets(first, second, shifts.index_select(0, inside), n_atoms)
        dist = torch.linalg.vector_norm(vectors, dim=1)
        unit = vectors / dist.unsqueeze(1)
        # angle at j between j->i (minus the vector of ji) and j->k (the vector of kj)
        cos = -(unit.index_select(0, ji) * unit.index_select(0, kj)).sum(1)
        cbf = self.angular(cos.clamp(-1.0, 1.0))
        x = (dist / self.cutoff).unsqueeze(1)
        rbf = _envelope(x, self.envelope_exponent) * torch.sin(self.freq * x)
        # the spherical basis per triplet, a[t, l, r] = cbf[t, l] rad[kj, l, r] (flattened as
        # lin_sbf1 reads it), projected for all blocks at once: [T, blocks * int_emb]
        basis = cbf.unsqueeze(2) * self.radial(dist).index_select(0, kj)
        sbf = torch.mm(basis.flatten(1), self.sbf_weight).split(self.int_emb, 1)
        h = self.emb.index_select(0, types)
        pair = [h.index_select(0, first), h.index_select(0, second), F.silu(self.emb_rbf(rbf))]
        m = F.silu(self.emb_lin(torch.cat(pair, 1)))
        energy = self.first_output(m, rbf, first, n_atoms)
        for k, (blk, out) in enumerate(zip(self.interactions, self.outputs)):  # noqa: B905
            m = blk(m, rbf, sbf[k], kj, ji)
            energy = energy + out(m, rbf, first, n_atoms)
        return energy
