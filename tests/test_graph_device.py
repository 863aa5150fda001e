"""Graphs built on the positions' device equal the host-built graphs, edge for edge."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

import congener.simulation.integrator as integrator
from congener.graph import build_graph
from congener.graph import triplet_indices as triplets_torch
from congener.graph_device import device_graph
from congener.simulation.md import run_md
from tests.conftest import numpy_triplets as triplets
from tests.conftest import rattled_diamond, small_potential

pytestmark = pytest.mark.usefixtures("one_thread")


def _systems():
    liquid = rattled_diamond("Ge", a=5.65, reps=(2, 2, 2), amount=0.4, seed=3)
    primitive = ase.build.bulk("Si", "diamond", a=5.43)  # 2 atoms: images well past one cell
    primitive.rattle(0.05, seed=1)
    return [rattled_diamond(seed=5), liquid, primitive]


def _tensors(structures):
    pos = torch.tensor(np.concatenate([a.positions for a in structures]))
    species = torch.tensor(np.concatenate([a.numbers for a in structures]))
    cell = torch.tensor(np.stack([a.cell.array for a in structures]))
    n_atoms = torch.tensor([len(a) for a in structures])
    return pos, species, cell, n_atoms


@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_device_graph_equals_host_graph(cutoff, device="cpu"):
    structures = _systems()
    host = build_graph(structures, cutoff)
    dev = device_graph(*(t.to(device) for t in _tensors(structures)), cutoff)
    for name in ("edge_index", "cell_shifts", "edge_reverse", "batch", "n_atoms", "species"):
        assert torch.equal(getattr(dev, name).cpu(), getattr(host, name)), name
    assert torch.allclose(dev.edge_vectors().cpu(), host.edge_vectors(), atol=1e-12)
    # the reverse of every edge is its mirror image: r_rev = -r
    r = dev.edge_vectors()
    assert torch.allclose(r.index_select(0, dev.edge_reverse), -r, atol=1e-12)
    kj, ji = triplets_torch(dev.edge_index, dev.edge_reverse, dev.positions.shape[0])
    ref_kj, ref_ji = triplets(host.edge_index.numpy(), host.edge_reverse.numpy(),
                              host.positions.shape[0])
    assert np.array_equal(kj.cpu().numpy(), ref_kj) and np.array_equal(ji.cpu().numpy(), ref_ji)
    assert kj.numel() == host.n_triplets


def test_md_with_device_graphs_follows_the_host_path(monkeypatch):
    """The same trajectory when MD rebuilds its graphs on the device path (here the CPU):
    a small skin makes it rebuild often."""
    pot = small_potential(("Si",), cutoff=4.0)
    start = [rattled_diamond(seed=7), rattled_diamond(seed=8, amount=0.12)]
    kwargs = dict(temperature_K=1500.0, timestep_fs=1.0, steps=40, seed=3, sample_every=40,
                  skin_A=0.05, threads=1, dtype="float64")
    host = run_md(pot, [a.copy() for a in start], **kwargs)
    calls = []
    import congener.graph_device as gd  # the integrator imports it where it is used

    original = gd.device_graph

    def counted(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(gd, "device_graph", counted)
    monkeypatch.setattr(integrator, "GRAPH_PATH", "device")
    dev = run_md(pot, [a.copy() for a in start], **kwargs)
    assert len(calls) >= 3  # it did rebuild, on the device path
    for a, b in zip(host.trajectories, dev.trajectories, strict=True):
        assert np.allclose(a.positions[-1], b.positions[-1], atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_graph_on_cuda_equals_host_graph():
    test_device_graph_equals_host_graph(5.0, device="cuda")
