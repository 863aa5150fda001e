"""DimeNet++ (Gasteiger et al. 2020, "Fast and uncertainty-aware directional message passing").

Maps a `Graph` to per-atom energies. Follows the published architecture (embedding block,
interaction blocks with down/up projection, output blocks, swish) and its parameter names, with
exact reformulations for speed on a CPU (results equal the direct form to float rounding):

- Triplets as dense per-atom blocks (`models.triplets`): for atom j, the edges ji into j and
  the edges kj out of j form a [D, D] block (D = largest degree, zero-padded; cbf is zero
  where (ji, kj) is no triplet of the graph: on the diagonal, k = i). The message sum of a
  block, agg[ji] = sum_kj sum_l cbf[ji, kj, l] sbf[kj, l, :] x_kj[kj, :], is one batched
  matmul [N, D, L*D] @ [N, L*D, C]; no triplet-sized gather, product or scatter is recorded.
- The angles come from a batched Gram matrix of unit edge vectors; the angular basis Y_l^0
  and the spherical radial factor (float64 spherical Bessel functions) are autograd Functions
  whose derivatives of any order are closed forms (`triplets.AngularDerivative`,
  `basis._RadialDerivative`), instead of ~100 recorded small ops each.
- The spherical basis is linear in its radial factor: lin_sbf1 is applied to the padded
  radial factor of the edges kj for all blocks at once ([n, L, D, R] -> [n, L, D, basis_emb *
  blocks] per atom group), then each block's lin_sbf2 (-> [n, L, D, C]); lin_rbf2 . lin_rbf1
  as one [hidden, R] matrix.
- The output blocks' atom-wise MLPs run for all blocks at once as batched matmuls.
- Gathers use `index_select`, scatters `index_add_`/`scatter_` (no advanced-index assignment:
  its CPU kernel stalls for milliseconds when the other core is busy).

One forward pass (`DimeNetPP.run`) serves two uses: autograd through it (training, which
differentiates forces again), and `energy_gradient` (models/dimenet_grad.py), which takes what
the pass kept (`Pass`) and writes the gradient of the energy by hand for energies and forces
alone, without autograd's bookkeeping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from congener.bounds import check_float, check_int
from congener.graph import Graph
from congener.models.basis import BesselBasis, SphericalBasis, _RadialState
from congener.models.family import Network
from congener.models.triplets import Triplets

MAX_Z = 94
MAX_CUTOFF_A = 12.0
# upper bounds of the integer sizes (widths: 4096); far above any published DimeNet++
_MAX_SIZE = {"num_blocks": 32, "num_spherical": 16, "num_radial": 64, "envelope_exponent": 32,
             "num_before_skip": 16, "num_after_skip": 16, "num_output_layers": 16}


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
        # 12 Å spans two neighbour shells of the largest atoms (Cs-Cs 5.3 Å); far beyond, the
        # graph of a solid grows to tens of millions of edges (100 Å: 53 M, out of memory)
        check_float("model.cutoff", self.cutoff, 0.0, MAX_CUTOFF_A, low_open=True)
        for name, value in asdict(self).items():
            if name != "cutoff":
                check_int(f"model.{name}", value, 1, _MAX_SIZE.get(name, 4096))


_silu = F.silu


class _Residual(nn.Module):
    """x + swish(lin2(swish(lin1(x)))); its parameters (computed by `_residual`)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(width, width), nn.Linear(width, width)


def _residual(res: _Residual, x: Tensor, kept: list[tuple[Tensor, Tensor]]) -> Tensor:
    z1 = res.lin1(x)
    z2 = res.lin2(_silu(z1))
    kept.append((z1, z2))
    return x + _silu(z2)


class _Embedding(nn.Module):
    def __init__(self, cfg: DimeNetConfig) -> None:
        super().__init__()
        self.emb = nn.Embedding(MAX_Z + 1, cfg.hidden)
        nn.init.uniform_(self.emb.weight, -3**0.5, 3**0.5)
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden)
        self.lin = nn.Linear(3 * cfg.hidden, cfg.hidden)


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

    def sbf_weight(self) -> Tensor:
        """lin_sbf1 as a map of the radial factor per angular order: [L, R, basis_emb]."""
        w = self.lin_sbf1.weight.view(self.basis_emb, self.num_spherical, self.num_radial)
        return w.permute(1, 2, 0)


class _Output(nn.Module):
    def __init__(self, cfg: DimeNetConfig) -> None:
        super().__init__()
        self.lin_rbf = nn.Linear(cfg.num_radial, cfg.hidden, bias=False)
        self.lin_up = nn.Linear(cfg.hidden, cfg.out_emb, bias=False)
        self.lins = nn.ModuleList(nn.Linear(cfg.out_emb, cfg.out_emb)
                                  for _ in range(cfg.num_output_layers))
        self.lin = nn.Linear(cfg.out_emb, 1, bias=False)
        nn.init.zeros_(self.lin.weight)


@dataclass
class BlockPass:
    """What one interaction block kept: pre-activations (z_*), the products' factors, the
    padded triplet messages and their factors (per atom group)."""

    z_ji: Tensor
    z_kj: Tensor
    a_kj: Tensor
    rbf_proj: Tensor
    z_down: Tensor
    x_kj: list[Tensor]
    sbf: list[Tensor]
    messages: list[Tensor]
    z_up: Tensor
    z_lin: Tensor
    before: list[tuple[Tensor, Tensor]]
    after: list[tuple[Tensor, Tensor]]


@dataclass
class Pass:
    """What one forward pass kept: geometry, bases and each block's activations."""

    vec: Tensor
    dist: Tensor
    unit: Tensor
    tri: Triplets
    radial: _RadialState
    sbf_weight: Tensor
    emb_z: Tensor
    emb_proj: Tensor
    ms: list[Tensor] = field(default_factory=list)
    out_proj: list[Tensor] = field(default_factory=list)
    out_z: list[Tensor] = field(default_factory=list)
    blocks: list[BlockPass] = field(default_factory=list)


def _interaction(blk: _Interaction, m: Tensor, rbf: Tensor, sbf_emb: list[Tensor],
                 tri: Triplets) -> tuple[Tensor, BlockPass]:
    """One interaction block: m [E, hidden] -> m [E, hidden]; sbf_emb per atom group
    [n, L, D, basis_emb]: the spherical basis' radial factor of the edges kj through the
    block's lin_sbf1, padded."""
    sbf = [F.linear(e, blk.lin_sbf2.weight) for e in sbf_emb]  # per group [n, L, D, int_emb]
    rbf_proj = F.linear(rbf, blk.rbf_weight())
    z_ji, z_kj = blk.lin_ji(m), blk.lin_kj(m)
    a_kj = _silu(z_kj)
    z_down = F.linear(a_kj * rbf_proj, blk.lin_down.weight)
    x_kj = tri.pad_out(_silu(z_down))  # per group [n, D, int_emb]
    messages = tri.messages(sbf, x_kj)
    z_up = F.linear(tri.aggregate(messages), blk.lin_up.weight)
    h = _silu(z_ji) + _silu(z_up)
    before: list[tuple[Tensor, Tensor]] = []
    for res in blk.before_skip:
        h = _residual(res, h, before)
    z_lin = blk.lin(h)
    h = _silu(z_lin) + m
    after: list[tuple[Tensor, Tensor]] = []
    for res in blk.after_skip:
        h = _residual(res, h, after)
    return h, BlockPass(z_ji, z_kj, a_kj, rbf_proj, z_down, x_kj, sbf, messages, z_up, z_lin,
                        before, after)


def _outputs(blocks: nn.ModuleList, atom_sums: list[Tensor], kept: list[Tensor]) -> Tensor:
    """The output blocks' atom-wise MLPs, all blocks at once (batched matmuls): [N]."""
    x = torch.stack(atom_sums)  # [blocks, N, hidden]
    x = torch.bmm(x, torch.stack([b.lin_up.weight for b in blocks]).transpose(1, 2))
    for k in range(len(blocks[0].lins)):
        weight = torch.stack([b.lins[k].weight for b in blocks]).transpose(1, 2)
        bias = torch.stack([b.lins[k].bias for b in blocks]).unsqueeze(1)
        kept.append(torch.baddbmm(bias, x, weight))
        x = _silu(kept[-1])
    x = torch.bmm(x, torch.stack([b.lin.weight for b in blocks]).transpose(1, 2))
    return x.sum(0).squeeze(-1)


def _versions(*tensors: Tensor) -> tuple[int, ...]:
    """The tensors' in-place modification counters (kept on the host: reading them costs no
    device read); a prepared layout is reused only while they are unchanged."""
    return tuple(t._version for t in tensors)


class DimeNetPP(Network):
    """DimeNet++: `Graph` (with positions/cell possibly strained) -> atomic energies [N] (eV).
    Its energy gradient is written by hand (`energy_gradient`, models/dimenet_grad.py)."""

    family = "dimenet++"
    explicit_gradient = True

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

    def config(self) -> dict:
        return asdict(self.cfg)

    @classmethod
    def from_config(cls, config: dict) -> DimeNetPP:
        return cls(DimeNetConfig(**config))

    def blocks(self) -> list[tuple[str, list[str]]]:
        """Bases, embedding, then each interaction with the output block that reads it."""
        out = [("basis", ["rbf.*", "sbf.*"]), ("embedding", ["embedding.*"]),
               ("output:0", ["outputs.0.*"])]
        for k in range(len(self.interactions)):
            out += [(f"interaction:{k}", [f"interactions.{k}.*"]),
                    (f"output:{k + 1}", [f"outputs.{k + 1}.*"])]
        return out

    def block_aliases(self) -> dict[str, list[str]]:
        return {"interactions": [f"interaction:{k}" for k in range(len(self.interactions))],
                "outputs": [f"output:{k}" for k in range(len(self.outputs))]}

    def forward(self, graph: Graph, positions: Tensor, cell: Tensor) -> Tensor:
        """Per-atom energies [N] for the given (differentiable) positions [N,3] and cell [B,3,3]."""
        return self.run(graph, positions, cell)[0]

    def prepare(self, graph: Graph, on: Graph | None = None) -> None:
        """Lay out `graph`'s triplets now (the host reads of degrees and sizes happen here) and
        keep the layout for every later pass over the same edges: a pass over a graph whose
        `edge_index` and `edge_reverse` are these very tensors (MD between neighbour-list
        builds) reuses it and reads nothing from the device. `on`: the same graph moved to
        another device (training batches), laid out from the host copy `graph` and kept for
        `on`'s tensors."""
        target = graph if on is None else on
        if on is not None and on.edge_index.shape != graph.edge_index.shape:
            raise ValueError("prepare(graph, on): `on` must be `graph` moved to a device")
        n = graph.positions.shape[0]
        layout = Triplets(graph, n)
        if on is not None:
            layout = layout.to(on.edge_index.device)
        self._layout = (target.edge_index, target.edge_reverse, n, layout,
                        _versions(target.edge_index, target.edge_reverse))

    def _triplets(self, graph: Graph, n: int) -> Triplets:
        """The prepared layout when `graph` has the prepared edges, else a new one."""
        kept = getattr(self, "_layout", None)
        if kept is not None and kept[0] is graph.edge_index and kept[1] is graph.edge_reverse \
                and kept[2] == n and kept[4] == _versions(graph.edge_index, graph.edge_reverse):
            return kept[3].reuse()
        return Triplets(graph, n)

    def _apply(self, fn, recurse: bool = True):  # nn.Module's signature
        self._layout = None  # a layout lives on the device it was made on
        return super()._apply(fn, recurse)

    def energy_gradient(self, graph: Graph, positions: Tensor, cell: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Atomic energies [N], edge vectors [E, 3] and d(total energy)/d(edge vectors)
        [E, 3], computed without autograd (models/dimenet_grad.py)."""
        from congener.models.dimenet_grad import energy_gradient

        return energy_gradient(self, graph, positions, cell)

    def run(self, graph: Graph, positions: Tensor, cell: Tensor) -> tuple[Tensor, Pass]:
        """Per-atom energies [N] and what the pass kept for `energy_gradient`."""
        i, j = graph.edge_index[0], graph.edge_index[1]
        n = positions.shape[0]
        vec = graph.edge_vectors(positions, cell)  # [E,3], x_j - x_i
        dist = vec.norm(dim=-1)
        unit = vec / dist.unsqueeze(-1)
        tri = self._triplets(graph, n)
        tri.set_angles(unit, self.sbf.ynorm, self.sbf.ynorm_values)
        rbf = self.rbf(dist)
        radial = self.sbf.radial_state(dist)
        rad = tri.radial(self.sbf.radial_table(dist, radial))  # per group [n, L, D, R]
        sbf_weight = torch.cat([blk.sbf_weight() for blk in self.interactions], 2)
        sbf_emb = [torch.matmul(r, sbf_weight) for r in rad]  # [n, L, D, basis_emb * blocks]
        b = self.cfg.basis_emb
        emb = self.embedding
        emb_proj = emb.lin_rbf(rbf)
        x = emb.emb(graph.species)
        pair = [x.index_select(0, i), x.index_select(0, j), _silu(emb_proj)]
        emb_z = emb.lin(torch.cat(pair, -1))
        kept = Pass(vec, dist, unit, tri, radial, sbf_weight, emb_z, emb_proj)
        m = _silu(emb_z)
        atom_sums = []
        for k, out in enumerate(self.outputs):
            if k:
                m, block = _interaction(self.interactions[k - 1], m, rbf,
                                        [e[..., (k - 1) * b:k * b] for e in sbf_emb], tri)
                kept.blocks.append(block)
            kept.ms.append(m)
            kept.out_proj.append(F.linear(rbf, out.lin_rbf.weight))
            x = kept.out_proj[-1] * m
            atom_sums.append(x.new_zeros(n, x.shape[1]).index_add_(0, i, x))
        return _outputs(self.outputs, atom_sums, kept.out_z), kept
