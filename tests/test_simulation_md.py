"""Batched Langevin MD: skin graphs, NVE energy conservation, NVT temperature, batch = single,
and failures recorded without stopping the other trajectories."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

from congener.analysis.stability import (
    format_stability_table,
    stability_records,
    stability_summary,
    stability_table,
)
from congener.graph import build_graph
from congener.models.potential import Prediction
from congener.simulation.md import (
    Failure,
    kinetic_temperature,
    md_init,
    prune_graph,
    run_md,
    system_seeds,
)
from tests.conftest import rattled_diamond, small_potential

pytestmark = pytest.mark.usefixtures("one_thread")


class PairSprings(torch.nn.Module):
    """Test oracle: E = sum over pairs closer than the cutoff of k/2 [(d - r0)² - (rc - r0)²]
    (eV); forces by autograd. Atoms of `nan_species` get NaN forces."""

    def __init__(self, k: float = 2.0, r0: float = 2.55, cutoff: float = 3.0,
                 nan_species: int | None = None) -> None:
        super().__init__()
        self.k, self.r0, self.cutoff, self.nan_species = k, r0, cutoff, nan_species

    def forward(self, graph, stress: bool = False) -> Prediction:
        pos = graph.positions.detach().requires_grad_(True)
        with torch.enable_grad():
            d = graph.edge_vectors(pos).norm(dim=-1)
            pair = 0.25 * self.k * ((d - self.r0) ** 2 - (self.cutoff - self.r0) ** 2)
            pair = torch.where(d < self.cutoff, pair, torch.zeros_like(pair))
            atomic = torch.zeros(len(pos), dtype=pos.dtype).index_add_(0, graph.edge_index[0], pair)
            energy = torch.zeros(graph.n_structures, dtype=pos.dtype).index_add_(
                0, graph.batch, atomic)
            (grad,) = torch.autograd.grad(energy.sum(), pos)
        forces = -grad
        if self.nan_species is not None:
            forces = torch.where((graph.species == self.nan_species)[:, None], float("nan"),
                                 forces)
        return Prediction(energy=energy.detach(), forces=forces)


def fcc(symbol: str = "Cu", a: float = 3.6, reps: int = 2):
    return ase.build.bulk(symbol, "fcc", a=a, cubic=True) * (reps, reps, reps)


def test_skin_graph_gives_exact_energies_and_forces():
    pot = small_potential(cutoff=4.0)
    atoms = rattled_diamond("Si", amount=0.1)
    exact = pot(build_graph(atoms, 4.0))
    wide_graph = build_graph(atoms, 5.0)
    wide = pot(wide_graph)
    assert wide_graph.n_triplets > build_graph(atoms, 4.0).n_triplets
    torch.testing.assert_close(wide.energy, exact.energy, rtol=0, atol=1e-12)
    torch.testing.assert_close(wide.forces, exact.forces, rtol=0, atol=1e-12)
    pruned, dist = prune_graph(wide_graph, 4.0)
    assert pruned.edge_index.shape == build_graph(atoms, 4.0).edge_index.shape
    assert float(dist.max()) < 4.0
    torch.testing.assert_close(pot(pruned).forces, exact.forces, rtol=0, atol=1e-12)


def test_init_zero_momentum_and_seeds_per_system():
    atoms = [fcc(), fcc(reps=1)]
    state = md_init(atoms, PairSprings(), temperature_K=300.0, seed=3)
    net = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, state.batch, state.momenta)
    assert float(net.abs().max()) < 1e-10
    assert kinetic_temperature(state).shape == (2,)
    assert len(set(system_seeds(3, 4))) == 4 and system_seeds(3, 2) == system_seeds(3, 4)[:2]


def test_nve_conserves_energy_second_order():
    spread = {}
    for dt in (1.0, 0.5):
        result = run_md(PairSprings(), [fcc()], temperature_K=300.0, timestep_fs=dt,
                        steps=int(300 / dt), friction_per_ps=0.0, seed=1,
                        sample_every=int(2 / dt), threads=1)
        t = result.trajectories[0]
        assert t.stable
        spread[dt] = np.ptp(t.total_energy_eV)
        assert spread[dt] < 1e-3 * np.ptp(t.potential_energy_eV)
    assert 3.0 < spread[1.0] / spread[0.5] < 5.0  # velocity Verlet: error ∝ dt²


def test_nve_dimenet_conserves_energy():
    result = run_md(small_potential(cutoff=4.0), [ase.build.bulk("Si", "diamond", a=5.43,
                                                                 cubic=True)],
                    temperature_K=300.0, timestep_fs=0.5, steps=150, friction_per_ps=0.0,
                    seed=1, sample_every=10, min_distance_A=1.0, threads=1)
    t = result.trajectories[0]
    assert t.stable
    assert np.ptp(t.total_energy_eV) < 1e-6 and np.ptp(t.potential_energy_eV) > 1e-4


def test_nvt_mean_kinetic_temperature():
    result = run_md(PairSprings(), [fcc()] * 4, temperature_K=300.0, timestep_fs=2.0,
                    steps=1000, friction_per_ps=10.0, seed=2, sample_every=5, threads=1)
    temps = np.array([t.temperature_K[20:] for t in result.trajectories])
    assert result.n_stable == 4
    assert abs(temps.mean() - 300.0) < 15.0


def test_batched_equals_separate_runs():
    pot = small_potential(cutoff=4.0)
    atoms = [rattled_diamond("Si", seed=k, amount=0.03, shear=0.0) for k in range(2)]
    atoms.append(ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1))
    seeds = system_seeds(7, 3)
    kwargs = dict(temperature_K=600.0, timestep_fs=1.0, steps=15, friction_per_ps=5.0,
                  sample_every=5, min_distance_A=1.0, threads=1)
    batched = run_md(pot, atoms, seed=7, **kwargs)
    for k, a in enumerate(atoms):
        single = run_md(pot, [a], seed=[seeds[k]], **kwargs)
        np.testing.assert_allclose(single.trajectories[0].positions[-1],
                                   batched.trajectories[k].positions[-1], rtol=0, atol=1e-9)


def test_failures_are_recorded_and_others_continue():
    close = fcc()
    close.positions[1] = close.positions[0] + [1.0, 0.0, 0.0]
    strained = fcc()
    strained.rattle(0.08, seed=1)  # ~0.08 eV/atom of spring energy: heats far above 5 x 20 K
    systems = [fcc(), fcc("Ag", a=3.6), close, strained]
    result = run_md(PairSprings(nan_species=47), systems, temperature_K=20.0,
                    timestep_fs=2.0, steps=100, friction_per_ps=0.1, seed=0, sample_every=10,
                    min_distance_A=2.0, threads=1)
    good, nan, contact, hot = result.trajectories
    assert good.stable and good.steps[-1] == 100 and len(good.steps) == 11
    assert nan.failure is Failure.NON_FINITE and nan.failed_step == 0
    assert contact.failure is Failure.CLOSE_CONTACT and contact.failed_step == 0
    assert hot.failure is Failure.OVERHEATED and 0 < hot.failed_step < 100
    assert result.n_stable == 1

    records = stability_records(result, mode="scratch", size=10)
    rows = stability_table(records + stability_records(result, mode="transfer", size=10))
    assert [(r.mode, r.stable, r.total) for r in rows] == [("scratch", 1, 4), ("transfer", 1, 4)]
    # 1 of 4 stable: the Wilson 95 % interval is 0.05-0.70 (closed form: see below)
    assert "| scratch | 10 | 1 | 4 | 0.25 | 0.05-0.70 |" in format_stability_table(rows)
    summary = stability_summary(result)
    assert summary["stable"] == 1 and summary["trajectories"][3]["reason"] == "overheated"


@pytest.mark.parametrize(("stable", "total"), [(1, 4), (35, 100), (0, 5), (100, 100)])
def test_wilson_interval_matches_the_closed_form(stable, total):
    """The interval the stability table reports (scipy) against Wilson's formula by hand;
    the paper's scratch figure at 10 structures, 35 of 100, spans 0.26-0.45."""
    from congener.analysis.stability import wilson_interval

    z, p = 1.959963984540054, stable / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low, high = wilson_interval(stable, total)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    if (stable, total) == (35, 100):
        assert (round(low, 2), round(high, 2)) == (0.26, 0.45)


def test_all_failed_stops_early():
    result = run_md(PairSprings(nan_species=29), [fcc()], temperature_K=100.0,
                    timestep_fs=1.0, steps=1000, seed=0, threads=1)
    assert result.n_stable == 0 and result.system_steps == 0


@pytest.mark.parametrize("bad", [dict(timestep_fs=0.0), dict(steps=-1)])
def test_bad_arguments(bad):
    from congener.errors import ConfigError

    kwargs = dict(temperature_K=100.0, timestep_fs=1.0, steps=1) | bad
    with pytest.raises(ConfigError):
        run_md(PairSprings(), [fcc()], **kwargs)


def _final_positions(result):
    return [t.positions[-1] for t in result.trajectories]


def test_md_resumes_from_its_checkpoint(tmp_path):
    """A run interrupted after a checkpoint and rerun equals the uninterrupted run (to float
    rounding); a run extended in a second sitting equals one long run; other settings are
    refused."""
    from congener.errors import CheckpointError

    pot = PairSprings()
    start = [fcc(), fcc()]
    start[1].rattle(0.02, seed=3)
    kw = dict(temperature_K=300.0, timestep_fs=2.0, friction_per_ps=5.0, seed=7,
              sample_every=5, stability_check=False)
    straight = run_md(pot, start, steps=30, **kw)

    def stop_at_17(step, state):
        if step == 17:
            raise KeyboardInterrupt
    path = tmp_path / "md.pt"
    with pytest.raises(KeyboardInterrupt):
        run_md(pot, start, steps=30, checkpoint=path, checkpoint_every=10, callback=stop_at_17,
               **kw)
    resumed = run_md(pot, start, steps=30, checkpoint=path, checkpoint_every=10, **kw)
    for t, u in zip(straight.trajectories, resumed.trajectories, strict=True):
        assert t.steps == u.steps == [0, 5, 10, 15, 20, 25, 30]
        np.testing.assert_allclose(u.positions[-1], t.positions[-1], atol=1e-9)
        np.testing.assert_allclose(u.temperature_K, t.temperature_K, rtol=1e-9)
    assert resumed.system_steps == straight.system_steps
    # a second sitting extends the run
    longer = tmp_path / "long.pt"
    run_md(pot, start, steps=15, checkpoint=longer, **kw)
    extended = run_md(pot, start, steps=30, checkpoint=longer, **kw)
    for a, b in zip(_final_positions(straight), _final_positions(extended), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    with pytest.raises(CheckpointError, match="other settings"):
        run_md(pot, start, steps=30, checkpoint=path, **{**kw, "temperature_K": 400.0})
