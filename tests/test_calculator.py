"""The ASE calculator: matches the Potential, conserves energy in ASE MD, loads checkpoints."""

from __future__ import annotations

import numpy as np
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
