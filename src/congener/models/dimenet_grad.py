"""The gradient of DimeNet++'s energy with respect to the edge vectors, written out by hand.

Energies and forces (MD, phonons, evaluation) need one gradient of the energy and nothing
more. Autograd gets it right, but it records every op of the forward pass (~520 nodes for
4 blocks) and then runs a generic backward of each. This module runs the model's own forward
pass (`DimeNetPP.run`) without recording and walks back through what it kept: each swish's
derivative from its pre-activation, each linear layer's transpose (with the skip additions
folded into those matmuls), the triplet contraction's two batched matmuls (the triplet blocks
are symmetric, so the transposed one reads contiguous memory), and the bases' closed-form
derivatives; the triplet gradients of all blocks accumulate in one tensor and meet the
angular derivative once. About 10 % faster than autograd for a 64-atom cell on 2 threads
(BENCHMARKS.md); `torch.compile` is no alternative on a CPU (slower, measured before the
project began).

Training differentiates forces again (with respect to the parameters), so it keeps autograd;
tests hold this gradient to autograd's to float64 rounding for every configuration option.
"""

from __future__ import annotations

import torch
from torch import Tensor

from congener.graph import Graph
from congener.models.dimenet import BlockPass, DimeNetPP, Pass, _Interaction, _Residual

_silu_grad = torch.ops.aten.silu_backward  # (grad of output, pre-activation) -> grad of input


def energy_gradient(net: DimeNetPP, graph: Graph, positions: Tensor, cell: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Atomic energies [N], edge vectors [E, 3] and the gradient of the total energy (the sum
    of the atomic energies) with respect to the edge vectors [E, 3], without autograd."""
    with torch.no_grad():
        energies, kept = net.run(graph, positions, cell)
        return energies, kept.vec, _edge_gradient(net, graph, kept)


def _residual_grad(res: _Residual, g: Tensor, z: tuple[Tensor, Tensor]) -> Tensor:
    """Through x + swish(lin2(swish(lin1(x)))) (z: the two pre-activations)."""
    inner = _silu_grad(g, z[1]) @ res.lin2.weight
    return torch.addmm(g, _silu_grad(inner, z[0]), res.lin1.weight)


def _block_grad(blk: _Interaction, b: BlockPass, g: Tensor, kept: Pass,
                g_cbf: list[Tensor | None],
                g_sbf: list[list[Tensor]], rbf_terms: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Through one interaction block: gradient of its output m -> of its input m. Adds the
    triplet basis' gradient to `g_cbf` (per atom group), the gradient of its spherical factor
    to `g_sbf` and (projection gradient, weight) pairs of the radial basis to `rbf_terms`."""
    for res, z in zip(reversed(blk.after_skip), reversed(b.after), strict=True):
        g = _residual_grad(res, g, z)
    g_m = g  # the skip connection
    g = _silu_grad(g, b.z_lin) @ blk.lin.weight
    for res, z in zip(reversed(blk.before_skip), reversed(b.before), strict=True):
        g = _residual_grad(res, g, z)
    g_m = torch.addmm(g_m, _silu_grad(g, b.z_ji), blk.lin_ji.weight)
    rows = kept.tri.pad_rows(_silu_grad(g, b.z_up) @ blk.lin_up.weight)  # per group [n, D, C]
    g_x = []
    for k, (cbf, h, s, x, r) in enumerate(zip(kept.tri.cbf, b.messages, b.sbf, b.x_kj, rows,
                                              strict=True)):
        # agg_rows = cbf @ h, h = s * x per angular order l
        if g_cbf[k] is None:
            g_cbf[k] = torch.bmm(r, h.transpose(1, 2))  # [n, D, L*D]
        else:
            g_cbf[k].baddbmm_(r, h.transpose(1, 2))
        # cbf^T @ r: the blocks are symmetric (cbf[r, l, c] = cbf[c, l, r]), so this is
        # cbf read as [n, D*L, D], contiguous, instead of a slow transposed read
        n, d, ld = cbf.shape
        g_h = torch.bmm(cbf.view(n, ld, d), r).view(n, d, ld // d, -1).transpose(1, 2)
        g_h = g_h.contiguous()  # [n, L, D, C]
        g_sbf[k].append((g_h * x.unsqueeze(1)) @ blk.lin_sbf2.weight)  # [n, L, D, basis_emb]
        g_x.append((g_h * s).sum(1))
    g_q = _silu_grad(kept.tri.unpad_out(g_x), b.z_down) @ blk.lin_down.weight  # [E, hidden]
    rbf_terms.append((g_q * b.a_kj, blk.rbf_weight()))
    return g_m.addmm_(_silu_grad(g_q * b.rbf_proj, b.z_kj), blk.lin_kj.weight)


def _edge_gradient(net: DimeNetPP, graph: Graph, kept: Pass) -> Tensor:
    """d(sum of atomic energies) / d(edge vectors) [E, 3] from one kept forward pass."""
    outs, tri, i = net.outputs, kept.tri, graph.edge_index[0]
    # the output MLPs, all blocks at once: [blocks, N, out_emb] -> per block [N, hidden]
    g = torch.stack([b.lin.weight for b in outs]).expand(len(outs), graph.positions.shape[0], -1)
    for k in reversed(range(len(outs[0].lins))):
        g = torch.bmm(_silu_grad(g, kept.out_z[k]), torch.stack([b.lins[k].weight for b in outs]))
    g_sums = torch.bmm(g, torch.stack([b.lin_up.weight for b in outs]))  # [blocks, N, hidden]
    g_cbf: list[Tensor | None] = [None for _ in tri.cbf]
    g_sbf: list[list[Tensor]] = [[] for _ in tri.cbf]
    rbf_terms: list[tuple[Tensor, Tensor]] = []
    g_m = None
    for k in reversed(range(len(outs))):
        g_x = g_sums[k].index_select(0, i)  # output k: x = lin_rbf(rbf) * m_k, summed per atom
        rbf_terms.append((g_x * kept.ms[k], outs[k].lin_rbf.weight))
        g_m = g_x * kept.out_proj[k] if g_m is None else g_m + g_x * kept.out_proj[k]
        if k:
            g_m = _block_grad(net.interactions[k - 1], kept.blocks[k - 1], g_m, kept, g_cbf,
                              g_sbf, rbf_terms)
    # embedding: m = swish(lin([x_i, x_j, swish(lin_rbf(rbf))])); only the last part moves
    emb = net.embedding
    hidden = emb.lin.weight.shape[0]
    g_e = _silu_grad(_silu_grad(g_m, kept.emb_z) @ emb.lin.weight[:, 2 * hidden:],
                     kept.emb_proj)
    rbf_terms.append((g_e, emb.lin_rbf.weight))
    g_rbf = rbf_terms[0][0] @ rbf_terms[0][1]  # [E, R]
    for t, w in rbf_terms[1:]:
        g_rbf.addmm_(t, w)
    g_dist = (g_rbf * net.rbf.derivative(kept.dist)).sum(1)
    # spherical radial factor: through lin_sbf1 of all blocks at once (the gradients were
    # added last block first)
    weight = kept.sbf_weight.transpose(1, 2)  # [L, basis_emb * blocks, R]
    g_rad = [torch.matmul(torch.cat(parts[::-1], 3), weight) for parts in g_sbf]
    d_rad = kept.radial.derivative(1, kept.dist.dtype)  # [L, R, E]
    g_dist = g_dist + (tri.unpad_radial(g_rad) * d_rad).sum((0, 1))
    # angles: cbf = Y(cos) masked, cos = (U U^T) * mask on each block of edge directions U
    g_units = []
    for gc, state, u, mask in zip(g_cbf, tri.angles, tri.units, tri.mask, strict=True):
        n, d = mask.shape[:2]
        g_cos = state.contract(1, gc.view(n, d, -1, d)).mul_(mask)
        g_units.append(torch.bmm(g_cos + g_cos.transpose(1, 2), u))
    g_unit = tri.unpad_out(g_units)
    unit, dist = kept.unit, kept.dist.unsqueeze(-1)
    radial_part = (unit * g_unit).sum(-1, keepdim=True)
    return (g_unit - unit * radial_part) / dist + unit * g_dist.unsqueeze(-1)
