"""The hand-written energy gradient of DimeNet++ (energies, forces, stress without autograd)
against autograd through the same forward pass, for every configuration option."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch

from congener.graph import build_graph
from congener.models.dimenet import DimeNetConfig, DimeNetPP
from congener.models.potential import Potential
from tests.conftest import rattled_diamond

CONFIGS = {
    "small": dict(hidden=16, out_emb=16, int_emb=8, num_blocks=2, num_spherical=4,
                  num_radial=4),
    "skips-and-layers": dict(hidden=8, out_emb=12, int_emb=4, basis_emb=3, num_blocks=3,
                             num_spherical=5, num_radial=3, envelope_exponent=6,
                             num_before_skip=2, num_after_skip=1, num_output_layers=1),
    "one-block": dict(hidden=8, out_emb=8, int_emb=4, num_blocks=1, num_spherical=3,
                      num_radial=2, num_output_layers=2),
    "one-angular-order": dict(hidden=8, out_emb=8, int_emb=4, num_blocks=2, num_spherical=1,
                              num_radial=3),
}


def potential(name: str, cutoff: float = 4.5) -> Potential:
    torch.manual_seed(3)
    net = DimeNetPP(DimeNetConfig(cutoff=cutoff, **CONFIGS[name]))
    for out in net.outputs:  # the default output init is zero
        torch.nn.init.normal_(out.lin.weight, std=0.3)
    with torch.no_grad():
        net.rbf.freq.mul_(1.1)  # the learnable frequencies away from their start
    pot = Potential(net, ["Si", "Ge"]).double()
    pot.set_energy_refs({"Si": -4.0, "Ge": -3.5})
    return pot


def structures() -> list[ase.Atoms]:
    """A primitive cell (several images of each atom), random positions with two elements
    (degrees vary: several degree groups), a slab and a crystal."""
    small = ase.build.bulk("Si", "diamond", a=5.43)
    small.rattle(0.1, seed=1)
    rng = np.random.default_rng(2)
    mixed = ase.Atoms("Si20Ge20", positions=rng.uniform(0, 10, (40, 3)), cell=[10.0] * 3,
                      pbc=True)
    slab = rattled_diamond("Ge", a=5.65, seed=3)
    slab.pbc = (True, True, False)
    return [small, mixed, slab, rattled_diamond(seed=4)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_explicit_gradient_equals_autograd(name):
    pot = potential(name)
    graph = build_graph(structures(), pot.cutoff).to(dtype=torch.float64)
    explicit = pot(graph, stress=True)
    auto = pot(graph, stress=True, create_graph=True)  # autograd through the same forward
    assert explicit.forces.grad_fn is None and auto.forces.grad_fn is not None
    assert float(explicit.forces.abs().max()) > 1e-2 and float(explicit.stress.abs().max()) > 1e-4
    torch.testing.assert_close(explicit.energy, auto.energy.detach(), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(explicit.forces, auto.forces.detach(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(explicit.stress, auto.stress.detach(), rtol=1e-10, atol=1e-14)


def test_explicit_gradient_float32_and_without_grad_mode():
    pot = potential("small").float()
    graph = build_graph(structures(), pot.cutoff).to(dtype=torch.float32)
    with torch.no_grad():  # the explicit path needs no autograd at all
        explicit = pot(graph)
    auto = pot(graph, create_graph=True)
    torch.testing.assert_close(explicit.forces, auto.forces.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_explicit_gradient_on_cuda_equals_cpu():
    pot = potential("small")
    graph = build_graph(structures(), pot.cutoff).to(dtype=torch.float64)
    cpu = pot(graph, stress=True)
    gpu = pot.to("cuda")(graph.to("cuda"), stress=True)
    torch.testing.assert_close(gpu.energy.cpu(), cpu.energy, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(gpu.forces.cpu(), cpu.forces, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gpu.stress.cpu(), cpu.stress, rtol=1e-10, atol=1e-13)


def test_explicit_gradient_with_isolated_atoms_and_molecules():
    pot = potential("skips-and-layers")
    alone = ase.Atoms("Ge", positions=[[1.0, 2.0, 3.0]], cell=[12.0] * 3, pbc=True)
    molecule = ase.Atoms("SiGeSi", positions=[[0, 0, 0], [2.3, 0.2, 0], [3.1, 2.0, 0.4]])
    far = ase.Atoms("Si2", positions=[[0, 0, 0], [6.0, 0, 0]])  # no edge at all
    for batch in ([alone], [molecule], [far], [alone, molecule, rattled_diamond(seed=5)]):
        graph = build_graph(batch, pot.cutoff).to(dtype=torch.float64)
        explicit, auto = pot(graph), pot(graph, create_graph=True)
        torch.testing.assert_close(explicit.energy, auto.energy.detach(), rtol=1e-13, atol=1e-12)
        torch.testing.assert_close(explicit.forces, auto.forces.detach(), rtol=1e-10,
                                   atol=1e-13)
    assert float(explicit.forces[1:4].abs().max()) > 1e-3  # the molecule's atoms


def reference_energy(net: DimeNetPP, graph) -> torch.Tensor:
    """DimeNet++ written plainly from the paper with triplet lists, gathers and scatters (no
    dense blocks, no folded projections): energy per structure [B]."""
    silu = torch.nn.functional.silu
    i, j = graph.edge_index
    vec = graph.edge_vectors()
    dist = vec.norm(dim=-1)
    kj, ji = graph.triplets()
    # the angle at j between j->i (minus edge ji = i->j) and j->k (edge kj)
    cos = (-vec[ji] * vec[kj]).sum(-1) / (dist[ji] * dist[kj])
    rbf = net.rbf(dist)
    sbf = (net.sbf.radial(dist)[kj] * net.sbf.angular(cos).unsqueeze(-1)).flatten(1)
    n, e = graph.positions.shape[0], dist.shape[0]

    def output(out, m):
        atoms = torch.zeros(n, m.shape[1], dtype=m.dtype).index_add(0, i, out.lin_rbf(rbf) * m)
        x = out.lin_up(atoms)
        for lin in out.lins:
            x = silu(lin(x))
        return out.lin(x).squeeze(-1)

    emb = net.embedding
    x = emb.emb(graph.species)
    m = silu(emb.lin(torch.cat([x[i], x[j], silu(emb.lin_rbf(rbf))], -1)))
    atomic = output(net.outputs[0], m)
    for blk, out in zip(net.interactions, net.outputs[1:], strict=True):
        x_kj = silu(blk.lin_kj(m)) * blk.lin_rbf2(blk.lin_rbf1(rbf))
        x_kj = silu(blk.lin_down(x_kj))
        messages = x_kj[kj] * blk.lin_sbf2(blk.lin_sbf1(sbf))
        agg = torch.zeros(e, messages.shape[1], dtype=m.dtype).index_add(0, ji, messages)
        h = silu(blk.lin_ji(m)) + silu(blk.lin_up(agg))
        for res in blk.before_skip:
            h = h + silu(res.lin2(silu(res.lin1(h))))
        h = silu(blk.lin(h)) + m
        for res in blk.after_skip:
            h = h + silu(res.lin2(silu(res.lin1(h))))
        m = h
        atomic = atomic + output(out, m)
    return torch.zeros(graph.n_structures, dtype=atomic.dtype).index_add(0, graph.batch, atomic)


@pytest.mark.parametrize("name", ["small", "skips-and-layers", "one-angular-order"])
def test_model_equals_plain_dimenet_with_triplet_lists(name):
    # the dense triplet blocks, reverse-edge rows, Gram-matrix angles and folded projections
    # against the architecture written out plainly; forces of both by autograd
    pot = potential(name)
    graph = build_graph(structures(), pot.cutoff).to(dtype=torch.float64)
    positions = graph.positions.clone().requires_grad_(True)
    plain = reference_energy(pot.network, type(graph)(**{**graph.__dict__,
                                                       "positions": positions}))
    (grad,) = torch.autograd.grad(plain.sum(), positions)
    ours = pot(graph)
    torch.testing.assert_close(ours.energy, plain.detach() + pot.reference_energy(graph),
                               rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ours.forces, -grad, rtol=1e-9, atol=1e-12)
