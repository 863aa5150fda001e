"""congener potentials driven by torch-sim: the model contract, the stress sign, NVT, NVE
energy conservation and a FIRE relaxation (tiny float64 DimeNet++ from conftest)."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch
import torch_sim as ts
from torch_sim.models.interface import validate_model_outputs

from congener.graph import build_graph
from congener.simulation.integrator import md_init, md_step
from congener.simulation.torchsim import CongenerModel
from tests.conftest import rattled_diamond, small_potential

F64, CPU = torch.float64, torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> CongenerModel:
    return CongenerModel(small_potential(("Si", "Ge"), cutoff=4.0))


def structures() -> list[ase.Atoms]:
    """Three different systems: a sheared (triclinic) rattled Si diamond cell, a rattled
    SiGe supercell and a 2-atom primitive cell shorter than twice the cutoff."""
    sige = ase.build.bulk("Si", "diamond", a=5.5, cubic=True) * (2, 1, 1)
    sige.symbols[::3] = "Ge"
    sige.rattle(0.05, seed=4)
    return [rattled_diamond("Si", amount=0.05), sige,
            ase.build.bulk("Ge", "diamond", a=5.65)]


def strained(atoms: ase.Atoms, eps: np.ndarray) -> ase.Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


def test_wrapper_equals_potential_on_a_batch(model):
    """Same energy, forces and stress (no sign flip) as the Potential on the same batch."""
    atoms = structures()
    out = model(ts.io.atoms_to_state(atoms, CPU, F64))
    ref = model.potential(build_graph(atoms, model.cutoff), stress=True)
    assert out["energy"].shape == (3,) and out["forces"].shape == (26, 3)
    assert out["stress"].shape == (3, 3, 3)
    assert all(v.dtype == F64 for v in out.values())
    torch.testing.assert_close(out["energy"], ref.energy, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref.forces, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["stress"], ref.stress, rtol=0, atol=1e-10)
    assert float(out["forces"].abs().max()) > 1e-3 and float(out["stress"].abs().max()) > 1e-4


def test_torch_sim_validates_the_model(model):
    """torch-sim's own contract check (shapes, no input mutation, batch = single)."""
    validate_model_outputs(CongenerModel(small_potential(("Si", "Fe"))), CPU, F64)
    assert model.compute_forces and model.compute_stress


def test_stress_is_strain_derivative_over_volume(model):
    """torch-sim's sign: sigma = (1/V) dE/d(strain), positive under tension; central finite
    differences of the wrapper's own energy on the triclinic cell."""
    atoms, h = structures()[0], 1e-5
    stress = model(ts.io.atoms_to_state(atoms, CPU, F64))["stress"][0].numpy()
    for a, b in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h if a == b else h / 2
        e = [float(model(ts.io.atoms_to_state(strained(atoms, s * eps), CPU, F64))["energy"][0])
             for s in (1, -1)]
        fd = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
        assert abs(fd - stress[a, b]) < 1e-9 + 1e-6 * np.abs(stress).max(), (a, b)


def test_dtype_copy_and_non_periodic(model):
    """A float32 model is a copy (the float64 potential stays) with float32 outputs close to
    float64; a non-periodic state works without stress and fails in one line with it."""
    ref = model(ts.io.atoms_to_state(structures()[:2], CPU, F64))
    single = CongenerModel(model.potential, dtype=torch.float32)
    assert single.dtype == torch.float32 and next(model.potential.parameters()).dtype == F64
    out32 = single(ts.io.atoms_to_state(structures()[:2], CPU, torch.float32))
    assert out32["forces"].dtype == torch.float32 and out32["energy"].dtype == torch.float32
    torch.testing.assert_close(out32["forces"].double(), ref["forces"], rtol=0, atol=1e-4)

    cluster = ase.Atoms("Si3", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.4, 0.3]])
    free = CongenerModel(model.potential, compute_stress=False)
    assert set(free(ts.io.atoms_to_state(cluster, CPU, F64))) == {"energy", "forces"}
    with pytest.raises(ValueError, match="stress needs periodic cells"):
        model(ts.io.atoms_to_state(cluster, CPU, F64))


def total_energy(state: ts.integrators.MDState) -> torch.Tensor:
    """Potential plus kinetic energy per system [B] (eV)."""
    kinetic = ts.calc_kinetic_energy(masses=state.masses, momenta=state.momenta,
                                     system_idx=state.system_idx)
    return state.energy + kinetic


def test_nve_conserves_energy_like_congener_integrator(model):
    """torch-sim's velocity Verlet (`ts.nve`) through the wrapper against congener's own
    (`md_step` with zero friction) from the same start: the setting of congener's
    test_nve_dimenet_conserves_energy (Si diamond, 300 K, seed 1, 0.5 fs, 150 steps) plus a
    rattled triclinic cell. Same tolerance: total-energy spread < 1e-6 eV per system (here
    sampled every step) while the potential energy moves by > 1e-4 eV; both integrators
    give the same trajectory (atoms start on cell faces, so torch-sim's wrapping is
    exercised). Momenta share units: torch-sim's metal time unit is ASE's."""
    atoms = [ase.build.bulk("Si", "diamond", a=5.43, cubic=True),
             rattled_diamond("Si", amount=0.02, seed=1)]
    ours = md_init(atoms, model.potential, temperature_K=300.0, seed=1)
    start = ts.io.atoms_to_state(atoms, CPU, F64)
    init_fn, update_fn = ts.nve(model, dt=torch.tensor(0.0005 * ts.units.MetalUnits.time),
                                kT=torch.tensor(0.0))
    state = init_fn(ts.integrators.MDState(**vars(start), momenta=ours.momenta.clone(),
                                           energy=ours.energy, forces=ours.forces))
    totals, potentials = [total_energy(state)], [state.energy]
    for _ in range(150):
        state = update_fn(state)
        ours = md_step(ours, model.potential, timestep_fs=0.5, friction_per_ps=0.0,
                       temperature_K=300.0)
        totals.append(total_energy(state))
        potentials.append(state.energy.clone())
    totals, potentials = torch.stack(totals), torch.stack(potentials)
    spread = totals.amax(0) - totals.amin(0)
    assert bool((spread < 1e-6).all()), spread
    assert bool((potentials.amax(0) - potentials.amin(0) > 1e-4).all())
    torch.testing.assert_close(state.energy, ours.energy, rtol=0, atol=1e-9)
    frac = torch.linalg.solve(ours.cell.index_select(0, ours.batch).transpose(1, 2),
                              (state.positions - ours.positions).unsqueeze(-1)).squeeze(-1)
    assert float((frac - frac.round()).abs().max()) < 1e-8  # equal up to whole cell vectors


def test_nvt_langevin_reaches_target_temperature(model):
    """Mean kinetic temperature of two systems over 300 steps after 100 of equilibration is
    within 15 % of 600 K (expected error ~5 % for 16 atoms, ~10 fs correlation time)."""
    torch.manual_seed(0)  # torch-sim's Langevin noise uses the global generator
    atoms = [rattled_diamond("Si", amount=0.02, seed=k) for k in range(2)]
    kT = torch.tensor(600.0 * ts.units.MetalUnits.temperature, dtype=F64)
    init_fn, update_fn = ts.nvt_langevin(
        model, dt=torch.tensor(0.001 * ts.units.MetalUnits.time, dtype=F64), kT=kT,
        gamma=torch.tensor(1 / (0.02 * ts.units.MetalUnits.time), dtype=F64))  # 1/(20 fs)
    state = init_fn(ts.io.atoms_to_state(atoms, CPU, F64), seed=2)
    temps = []
    for step in range(400):
        state = update_fn(state)
        if step >= 100:
            temps.append(ts.calc_kT(masses=state.masses, momenta=state.momenta,
                                    system_idx=state.system_idx) / kT)
    ratio = torch.stack(temps)
    assert bool(torch.isfinite(state.positions).all())
    assert abs(float(ratio.mean()) - 1.0) < 0.15, ratio.mean(0)


def test_integrate_runner_drives_two_systems(model):
    """`ts.integrate` (NVT) on ASE input: finite final state of both systems, whose stored
    energies are the wrapper's at the final positions."""
    atoms = [rattled_diamond("Si", amount=0.02), ase.build.bulk("Si", "diamond", a=5.43) * 2]
    start = ts.io.atoms_to_state(atoms, CPU, F64)
    final = ts.integrate(system=atoms, model=model, integrator=ts.nvt_langevin, n_steps=20,
                         temperature=300.0, timestep=0.001)
    assert final.n_systems == 2 and bool(torch.isfinite(final.positions).all())
    assert float((final.positions - start.positions).abs().max()) > 1e-3
    torch.testing.assert_close(final.energy, model(final)["energy"], rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Optimize has reached max steps")
def test_fire_relaxations_lower_the_energy(model):
    """Positions-only FIRE from rattled crystals (two systems) converges to max force
    < 3e-4 eV/Å at a lower energy; 20 steps of Frechet-cell FIRE, which moves the cell
    against torch-sim's stress, shrink cells that start under tension (stress > 0) and
    lower the energy: with the opposite sign they would expand."""
    atoms = [rattled_diamond("Si", amount=0.1, seed=k, shear=0.0) for k in range(2)]
    start = model(ts.io.atoms_to_state(atoms, CPU, F64))
    relaxed = ts.optimize(system=atoms, model=model, optimizer=ts.optimizers.fire,
                          convergence_fn=ts.generate_force_convergence_fn(
                              3e-4, include_cell_forces=False), max_steps=500)
    assert bool((relaxed.energy < start["energy"] - 1e-4).all())
    assert float(relaxed.forces.norm(dim=1).max()) < 3e-4
    assert float(start["forces"].norm(dim=1).max()) > 3e-3

    assert bool((start["stress"].diagonal(dim1=1, dim2=2) > 0).all())
    cell_relaxed = ts.optimize(system=atoms, model=model, optimizer=ts.frechet_cell_fire,
                               convergence_fn=ts.generate_force_convergence_fn(1e-6),
                               max_steps=20)
    volume = torch.tensor([a.get_volume() for a in atoms], dtype=F64)
    assert bool((torch.linalg.det(cell_relaxed.cell) < volume - 1.0).all())
    assert bool((cell_relaxed.energy < start["energy"] - 1e-3).all())


@pytest.mark.parametrize("family", ["chgnet", "sevennet"])
def test_autograd_families_equal_their_potential(family):
    """Families without DimeNet++'s explicit gradient (autograd forces and stress): small
    random CHGNet and SevenNet through the wrapper, called in inference mode, equal their
    Potential on a batch."""
    pytest.importorskip({"chgnet": "chgnet", "sevennet": "sevenn"}[family])
    if family == "chgnet":
        from tests.test_foundation_chgnet import small_chgnet as small
    else:
        from tests.test_foundation_sevennet import small_sevennet as small
    potential = small()
    atoms = structures()
    with torch.inference_mode():  # as a user might call it; autograd must still work
        out = CongenerModel(potential)(ts.io.atoms_to_state(atoms, CPU, F64))
    ref = potential(build_graph(atoms, potential.cutoff), stress=True)
    torch.testing.assert_close(out["energy"], ref.energy, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref.forces, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["stress"], ref.stress, rtol=0, atol=1e-10)
    assert float(out["forces"].abs().max()) > 1e-4
