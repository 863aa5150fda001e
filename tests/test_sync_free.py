"""The forward pass without host reads (issue 22's GPU path), checked on the CPU.

A tensor on PyTorch's `meta` device has a shape and no values: every host read of a value
(`.item()`, `.tolist()`, `bool(t)`, `nonzero`, a data-dependent size) raises there. A forward
pass that completes on meta tensors therefore reads nothing back from the device, which is
what keeps a GPU busy. The branch-free code this needs must give the same numbers as the CPU's
branches, and MD that keeps its skin graph unpruned (as on a GPU) the same trajectory.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

import congener.models.dimenet as dimenet
import congener.runtime as runtime
import congener.simulation.integrator as integrator
from congener.graph import build_graph
from congener.models.potential import Potential
from congener.models.triplets import Triplets
from congener.simulation.md import run_md
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.trainer import fit
from tests.conftest import rattled_diamond, small_potential

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_setup():
    """A potential and a two-structure graph on the meta device, prepared from the host copy
    (as the trainer prepares a batch before a pass on the GPU)."""
    pot = small_potential(("Si",), cutoff=4.0)
    graph = build_graph([rattled_diamond(seed=1), rattled_diamond(seed=2)], 4.0)
    meta, pot = graph.to("meta"), pot.to("meta")
    pot.prepare(graph, on=meta)
    return pot, meta


@pytest.mark.parametrize("create_graph", [False, True])
def test_forward_pass_reads_nothing_from_the_device(monkeypatch, create_graph):
    monkeypatch.setattr(runtime, "SYNC_FREE", True)
    pot, graph = _meta_setup()
    out = pot(graph, stress=True, create_graph=create_graph)
    assert out.energy.shape == (2,) and out.forces.shape == (16, 3)
    assert out.stress.shape == (2, 3, 3) and out.forces.device.type == "meta"
    if create_graph:  # a training step's backward pass, too
        (out.energy.sum() + out.forces.pow(2).sum() + out.stress.sum()).backward()
        assert all(p.grad is not None for p in pot.parameters() if p.requires_grad)


def test_meta_probe_catches_host_reads(monkeypatch):
    """The probe can fail: the CPU's branches (one host read each) raise on meta tensors."""
    monkeypatch.setattr(runtime, "SYNC_FREE", False)
    pot, graph = _meta_setup()
    with pytest.raises(RuntimeError, match="meta"):
        pot(graph)


def _close_pair_structures():
    """Cells with short distances (0.8 Å at cutoff 4 Å reaches the spherical Bessel power
    series, x < `series_below`; 1.3 Å), and a collinear chain (cos = -1 exactly)."""
    dimer = Atoms("Si4", positions=[[0, 0, 0], [0.78, 0.15, 0.1], [3.0, 2.5, 2.0],
                                    [3.2, 3.7, 3.3]], cell=[6.0, 6.5, 7.0], pbc=True)
    chain = Atoms("Si3", positions=[[0, 0, 0], [2.2, 0, 0], [4.4, 0, 0]],
                  cell=[[6.6, 0, 0], [0, 8.0, 0], [0, 0, 8.0]], pbc=True)
    close = rattled_diamond(seed=4)
    close.positions[1] = close.positions[0] + [0.75, 0.75, 0.75]  # 1.3 Å
    return [dimer, chain, close]


def test_branch_free_paths_equal_the_cpu_branches(monkeypatch):
    pot = small_potential(("Si",), cutoff=4.0)
    graph = build_graph(_close_pair_structures(), 4.0)
    dist = graph.edge_vectors().norm(dim=-1)
    assert float(dist.min()) / 4.0 < pot.network.sbf.series_below  # the series branch runs
    results = {}
    for mode in (False, True):
        monkeypatch.setattr(runtime, "SYNC_FREE", mode)
        explicit = pot(graph, stress=True)
        autograd = pot(graph, stress=True, create_graph=True)
        results[mode] = [explicit.energy, explicit.forces, explicit.stress,
                         autograd.forces.detach()]
    for a, b in zip(results[False], results[True], strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_prepared_layout_equals_a_fresh_one():
    """A pass over a prepared graph at other positions equals a pass that lays out anew."""
    pot = small_potential(("Si",), cutoff=4.0)
    graph = build_graph([rattled_diamond(seed=6, reps=(1, 1, 2))], 4.6)
    pot.prepare(graph)
    moved = graph.positions + 0.05 * torch.randn_like(graph.positions)
    from dataclasses import replace

    prepared = pot(replace(graph, positions=moved), stress=True)
    pot.network._layout = None
    fresh = pot(replace(graph, positions=moved), stress=True)
    for a, b in ((prepared.energy, fresh.energy), (prepared.forces, fresh.forces),
                 (prepared.stress, fresh.stress)):
        assert torch.allclose(a, b, atol=1e-12)


def test_unpruned_md_follows_pruned_md_and_lays_out_once_per_build(monkeypatch):
    """MD as on a GPU (skin graph kept, laid out once per neighbour-list build, branch-free
    model code) follows MD as on the CPU (graph pruned to the cutoff every step)."""
    pot = small_potential(("Si",), cutoff=4.0)
    start = [rattled_diamond(seed=7), rattled_diamond(seed=8, amount=0.12)]
    kwargs = dict(temperature_K=1500.0, timestep_fs=1.0, steps=40, seed=3, sample_every=40,
                  skin_A=0.3, threads=1, dtype="float64")
    monkeypatch.setattr(integrator, "PRUNE", "always")
    pruned = run_md(pot, [a.copy() for a in start], **kwargs)

    layouts, builds = [], []

    class Counted(Triplets):
        def __init__(self, *args, **kw):
            layouts.append(1)
            super().__init__(*args, **kw)

    original_build = integrator._build

    def counted_build(*args, **kw):
        builds.append(1)
        return original_build(*args, **kw)

    monkeypatch.setattr(dimenet, "Triplets", Counted)
    monkeypatch.setattr(integrator, "_build", counted_build)
    monkeypatch.setattr(integrator, "PRUNE", "never")
    monkeypatch.setattr(runtime, "SYNC_FREE", True)
    kept = run_md(pot, [a.copy() for a in start], **kwargs)
    assert len(builds) >= 2  # it rebuilt during the run
    assert len(layouts) == len(builds) + 1  # once at the start, once per build: not per step
    for a, b in zip(pruned.trajectories, kept.trajectories, strict=True):
        assert np.allclose(a.positions[-1], b.positions[-1], atol=1e-9)
    assert kept.system_steps == pruned.system_steps  # the same steps ran (and failed, if any)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_forward_on_cuda_does_not_synchronise():
    """On a GPU, with the graph prepared: a pass raises if anything waits for the device."""
    pot = small_potential(("Si",), cutoff=4.0).to("cuda")
    graph = build_graph([rattled_diamond(seed=1), rattled_diamond(seed=2)], 4.6).to("cuda")
    pot.prepare(graph)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pot(graph, stress=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.forces).all()


def test_training_with_prepared_batches_equals_plain_training(monkeypatch):
    """The trainer's branch-free path (each batch laid out from its host copy, as on a GPU)
    trains to the same weights as the CPU path."""
    from congener.data.structures import label

    teacher = small_potential(("Si",), cutoff=4.0, seed=5)
    data = []
    for k in range(6):
        atoms = rattled_diamond(seed=20 + k)
        pred = teacher(build_graph(atoms, 4.0), stress=True)
        data.append(label(atoms, energy=float(pred.energy[0]),
                          forces=pred.forces.numpy(), stress=pred.stress[0].numpy()))
    cfg = TrainConfig(epochs=2, batch_size=3, energy_weight=10.0, stress_weight=0.1,
                      dtype="float64", val_every=1, seed=0)
    weights = {}
    prepared = []
    original = Potential.prepare

    def counted(self, graph, on=None):
        prepared.append(1)
        return original(self, graph, on)

    monkeypatch.setattr(Potential, "prepare", counted)
    for mode in (False, True):
        monkeypatch.setattr(runtime, "SYNC_FREE", mode)
        pot = small_potential(("Si",), cutoff=4.0, seed=1)
        fit(pot, LabelledSet(data[:4], 4.0), LabelledSet(data[4:], 4.0), cfg)
        weights[mode] = torch.cat([p.detach().flatten() for p in pot.parameters()])
    assert prepared  # the branch-free run prepared its batches
    assert torch.allclose(weights[False], weights[True], rtol=1e-9, atol=1e-12)
    assert not torch.equal(weights[True], torch.cat(
        [p.detach().flatten() for p in small_potential(("Si",), seed=1).parameters()]))


def test_caches_notice_in_place_edits():
    """A prepared layout and a species check belong to the tensors' contents at the time:
    an in-place edit (PyTorch's version counter moves) makes them be redone."""
    from dataclasses import replace

    from congener.errors import DataError

    pot = small_potential(("Si",), cutoff=4.0)
    graph = build_graph([rattled_diamond(seed=9)], 4.0)
    pot.prepare(graph)
    order = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
    edited = replace(graph)  # the same tensors, permuted in place below
    edited.edge_index.copy_(graph.edge_index[:, order].clone())
    edited.cell_shifts.copy_(graph.cell_shifts[order].clone())
    edited.edge_reverse.copy_(inverse[graph.edge_reverse[order]].clone())
    fresh = small_potential(("Si",), cutoff=4.0)
    assert torch.allclose(pot(edited).energy, fresh(edited).energy, atol=1e-12)
    edited.species[0] = 6  # carbon: not in the model's table
    with pytest.raises(DataError, match="structure contains C"):
        pot(edited)


def test_unlabelled_stress_cannot_poison_the_loss():
    """A non-finite stress predicted for a structure without a stress label leaves the loss
    finite (the row is zeroed, not multiplied by a zero weight)."""
    from congener.models.potential import Prediction
    from congener.training.data import Targets
    from congener.training.losses import loss

    f64 = torch.float64
    stress = torch.zeros(2, 3, 3, dtype=f64)
    stress[1] = float("inf")
    pred = Prediction(energy=torch.zeros(2, dtype=f64), forces=torch.zeros(2, 3, dtype=f64),
                      stress=stress)
    ref = Targets(energy=torch.zeros(2, dtype=f64), forces=torch.zeros(2, 3, dtype=f64),
                  stress=torch.zeros(2, 3, 3, dtype=f64), has_stress=torch.tensor([True, False]),
                  n_atoms=torch.tensor([1, 1]))
    values = loss(pred, ref, TrainConfig(stress_weight=1.0)).read()
    assert all(np.isfinite(values)) and values[0] == 0.0
