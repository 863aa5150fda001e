"""DimeNet++ potential: forces = -grad E, stress = strain derivative, symmetries, batching."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

from congener.errors import DataError
from congener.models.dimenet import DimeNetConfig, DimeNetPP
from congener.testing import (
    assert_batch_consistent,
    assert_forces_match_fd,
    assert_invariant,
    assert_stress_match_fd,
    predict,
)
from tests.conftest import rattled_diamond, small_potential


def test_default_size_matches_paper_model():
    net = DimeNetPP(DimeNetConfig())
    assert sum(p.numel() for p in net.parameters()) == 123_174


def test_forces_are_minus_gradient(potential):
    assert_forces_match_fd(potential, rattled_diamond(seed=1), rtol=1e-6)


def test_forces_fd_multiple_images():
    pot = small_potential(cutoff=5.0)
    atoms = ase.build.bulk("Si", "diamond", a=5.43)  # 2 atoms, cutoff > half the cell
    atoms.rattle(0.1, seed=2)
    assert_forces_match_fd(pot, atoms)


def test_slab_has_no_images_along_its_open_axis(potential):
    # (T, T, F) with the bulk cell's short z = the same atoms (T, T, T) with 10 Å of vacuum
    slab = rattled_diamond(seed=4)
    slab.pbc = (True, True, False)
    padded = slab.copy()
    padded.cell[2, 2] += 10.0
    padded.pbc = True
    bulk = rattled_diamond(seed=4)
    e_slab, e_padded = predict(potential, slab), predict(potential, padded)
    np.testing.assert_allclose(float(e_slab.energy), float(e_padded.energy), rtol=1e-12)
    np.testing.assert_allclose(e_slab.forces.numpy(), e_padded.forces.numpy(), atol=1e-10)
    assert abs(float(predict(potential, bulk).energy) - float(e_slab.energy)) > 1e-3
    assert_forces_match_fd(potential, slab, rtol=1e-6)


def test_stress_is_strain_derivative(potential):
    assert_stress_match_fd(potential, rattled_diamond(seed=2))


def test_invariances(potential):
    assert_invariant(potential, rattled_diamond(seed=3))


def test_invariance_float32():
    pot = small_potential(dtype=torch.float32)
    assert_invariant(pot, rattled_diamond(seed=3), dtype=torch.float32, rtol=1e-5, atol=1e-4)


def test_batch_equals_single():
    pot = small_potential(elements=("Si", "Ge"))
    structures = [rattled_diamond("Si", seed=1), rattled_diamond("Ge", a=5.65, seed=2),
                  ase.build.bulk("Ge", "diamond", a=5.65)]
    assert_batch_consistent(pot, structures)


def test_energy_changes_with_geometry(potential):
    # guards the invariance tests against a model that ignores positions
    a, b = rattled_diamond(seed=1), rattled_diamond(seed=2)
    assert abs(float(predict(potential, a).energy[0] - predict(potential, b).energy[0])) > 1e-6


def test_energy_refs_add_per_atom(potential):
    atoms = rattled_diamond(seed=1)
    e0 = float(predict(potential, atoms).energy[0])
    potential.set_energy_refs({"Si": potential.get_energy_refs()["Si"] + 1.0})
    assert float(predict(potential, atoms).energy[0]) == pytest.approx(e0 + len(atoms))


def test_unknown_element_is_refused(potential):
    with pytest.raises(DataError, match="Ge"):
        predict(potential, ase.build.bulk("Ge", "diamond", a=5.65))


def test_smooth_at_cutoff():
    # a dimer crossing the cutoff: energy and force go continuously to zero
    pot = small_potential(cutoff=4.0)
    energies = []
    for r in np.linspace(3.98, 4.02, 5):
        dimer = ase.Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], cell=[20, 20, 20], pbc=True)
        energies.append(float(predict(pot, dimer).energy[0]))
    assert np.ptp(energies[2:]) < 1e-12
    assert abs(energies[0] - energies[-1]) < 1e-6

    def force(r: float) -> float:
        dimer = ase.Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], cell=[20, 20, 20], pbc=True)
        return float(predict(pot, dimer).forces.abs().max())

    # the force vanishes at the cutoff like (1 - r/rc)^3: the envelope (exponent 5) goes to
    # zero with two derivatives, and the Bessel sine sin(n pi r/rc) adds one more order
    inside = force(3.0)
    assert inside > 1e-4
    assert force(3.999) < 1e-5 * inside and force(4.001) == 0.0
    assert force(3.99) / force(3.98) == pytest.approx(0.125, rel=0.05)


def test_output_shapes_and_dtypes(potential):
    out = predict(potential, [rattled_diamond(), rattled_diamond(seed=5)], stress=True)
    assert out.energy.shape == (2,) and out.energy.dtype == torch.float64
    assert out.forces.shape == (16, 3) and out.stress.shape == (2, 3, 3)


def test_dimenet_passes_the_potential_contract():
    """The same contract checks every family's tests run (congener.testing.check_potential)."""
    from congener.testing import check_potential

    check_potential(small_potential(("Si", "Ge"), cutoff=4.0))
