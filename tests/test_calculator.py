"""The ASE calculator: matches the Potential, conserves energy in ASE MD, loads checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.md.verlet import VelocityVerlet

try:  # ase >= 3.29 (MaxwellBoltzmannDistribution is deprecated there)
    from ase.md.velocitydistribution import thermalize_momenta as thermalize
except ImportError:  # ase 3.23-3.28
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize

from congener.calculator import CongenerCalculator
from congener.models.checkpoint import save_potential
from congener.testing import predict
from tests.conftest import rattled_diamond, small_potential


def test_calculator_matches_potential_and_voigt_stress(tmp_path):
    pot = small_potential()
    atoms = rattled_diamond(seed=4)
    save_potential(tmp_path / "m.pt", pot)
    atoms.calc = CongenerCalculator.from_checkpoint(tmp_path / "m.pt", device="cpu")
    ref = predict(pot, atoms, stress=True)
    assert np.isclose(atoms.get_potential_energy(), float(ref.energy[0]), rtol=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref.forces.numpy(), rtol=1e-10, atol=1e-12)
    s = ref.stress[0].numpy()
    np.testing.assert_allclose(atoms.get_stress(), [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2],
                                                    s[0, 1]], rtol=1e-10, atol=1e-14)


def test_energy_is_conserved_in_ase_velocity_verlet():
    pot = small_potential()
    atoms = rattled_diamond(seed=5, amount=0.02)
    atoms.calc = CongenerCalculator(pot, device="cpu")
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    for _ in range(25):
        dyn.run(1)
        energies.append(atoms.get_total_energy())
    drift = np.ptp(energies)
    kinetic = atoms.get_kinetic_energy()
    assert kinetic > 0.01 and drift < 2e-3 * max(kinetic, 0.1), (drift, kinetic)


def test_per_atom_energies_one_pass_and_the_callers_potential_untouched():
    pot = small_potential(("Si",), cutoff=4.0, dtype=torch.float32)
    before = {k: v.clone() for k, v in pot.state_dict().items()}
    calc = CongenerCalculator(pot, device="cpu", dtype="float64")
    assert next(pot.parameters()).dtype == torch.float32  # not converted in place
    assert all(torch.equal(before[k], v) for k, v in pot.state_dict().items())
    atoms = rattled_diamond("Si", amount=0.1)
    atoms.calc = calc
    calls = []
    forward = calc.potential.forward
    calc.potential.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    energies = atoms.get_potential_energies()
    atoms.get_forces()
    atoms.get_stress()
    assert len(calls) == 1  # energy, per-atom energies, forces and stress in one evaluation
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    # each per-atom energy carries its atom's reference energy: shifting the reference of Si
    # by 1 eV shifts every atom by 1 eV
    shifted = small_potential(("Si",), cutoff=4.0)
    shifted.set_energy_refs({"Si": shifted.get_energy_refs()["Si"] + 1.0})
    other = atoms.copy()
    other.calc = CongenerCalculator(shifted, device="cpu")
    np.testing.assert_allclose(other.get_potential_energies(), energies + 1.0, atol=1e-6)
