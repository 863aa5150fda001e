"""Phonons: Stillinger-Weber Si through LAMMPS against an independent Γ-point calculation,
DOS normalisation, the DOS distance, and a DimeNet++ model through its ASE calculator."""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch

from congener.analysis.phonons import (
    PhononDOS,
    diamond_cell,
    dos_distance,
    phonon_dos,
    relax_isotropic,
)
from congener.calculator import CongenerCalculator
from congener.data.lammps_sw import LammpsSWCalculator
from congener.errors import DataError
from tests.conftest import small_potential

THZ = ase.units.s * 1e-12 / (2 * np.pi)  # ASE angular frequency unit -> THz


def gamma_frequencies_fd(atoms, calc, h: float = 1e-3) -> np.ndarray:
    """Γ-point frequencies (THz) of the periodic cell from a central-difference Hessian."""
    atoms = atoms.copy()
    atoms.calc = calc
    n = len(atoms)
    hessian = np.zeros((3 * n, 3 * n))
    for k in range(3 * n):
        a, d = divmod(k, 3)
        forces = []
        for sign in (1, -1):
            atoms.positions[a, d] += sign * h
            forces.append(atoms.get_forces().ravel())
            atoms.positions[a, d] -= sign * h
        hessian[k] = -(forces[0] - forces[1]) / (2 * h)
    m = np.repeat(atoms.get_masses(), 3)
    dyn = 0.5 * (hessian + hessian.T) / np.sqrt(np.outer(m, m))
    eig = np.linalg.eigvalsh(dyn)
    return np.sign(eig) * np.sqrt(np.abs(eig)) * THZ


@pytest.fixture(scope="module")
def sw_si() -> PhononDOS:
    return phonon_dos(LammpsSWCalculator("Si"), "Si")


def test_sw_si_lattice_and_gamma_frequencies(sw_si):
    assert sw_si.lattice_A == pytest.approx(5.431, abs=2e-3)  # SW Si lattice constant
    assert sw_si.n_primitive == 2
    assert np.abs(sw_si.gamma_THz[:3]).max() < 0.01  # acoustic modes at Γ
    # independent cross-check: finite-difference dynamical matrix of the 8-atom cell at Γ
    # (its Γ folds in the X point of the primitive cell; the highest mode is Γ optical)
    fd = gamma_frequencies_fd(diamond_cell("Si", sw_si.lattice_A), LammpsSWCalculator("Si"))
    assert np.abs(fd[:3]).max() < 0.05
    np.testing.assert_allclose(sw_si.gamma_THz[3:], fd[-3:], atol=0.02)
    assert 17.5 < sw_si.gamma_THz[-1] < 18.2  # SW overestimates Si's Raman line (15.5 THz)


def test_dos_normalisation_and_range(sw_si):
    area = np.trapezoid(sw_si.dos, sw_si.frequencies_THz)
    assert area == pytest.approx(3 * sw_si.n_primitive, rel=0.01)
    assert sw_si.frequencies_THz[np.argmax(sw_si.dos)] > 14.0  # TO band dominates the DOS
    assert sw_si.dos[sw_si.frequencies_THz > sw_si.gamma_THz[-1] + 0.5].max() < 1e-6


def test_dos_distance_of_known_spectra():
    """Unit boxes on [0, 1] and [0.5, 1.5] THz differ on half of each: distance 1; boxes that
    do not overlap: 2 (the maximum); a box and a triangle on [0, 1]: 1/2."""
    grid = np.linspace(0.0, 2.0, 4001)
    def box(lo, hi):
        return PhononDOS(grid, ((grid >= lo) & (grid <= hi)).astype(float), 5.43,
                         np.zeros(6), 2)
    assert dos_distance(box(0.0, 1.0), box(0.5, 1.5)) == pytest.approx(1.0, abs=5e-3)
    assert dos_distance(box(0.0, 0.5), box(1.0, 1.5)) == pytest.approx(2.0, abs=5e-3)
    triangle = PhononDOS(grid, np.where(grid <= 1.0, grid, 0.0), 5.43, np.zeros(6), 2)
    # normalised: box 1, triangle 2x on [0, 1]; integral of |1 - 2x| over [0, 1] = 1/2
    assert dos_distance(box(0.0, 1.0), triangle) == pytest.approx(0.5, abs=5e-3)


def test_dos_distance(sw_si):
    scaled = PhononDOS(sw_si.frequencies_THz * 0.6, sw_si.dos, 5.66, sw_si.gamma_THz * 0.6, 2)
    d = dos_distance(sw_si, scaled)
    assert 0.5 < d <= 2.0 and d == dos_distance(scaled, sw_si)
    twice = PhononDOS(sw_si.frequencies_THz, 2 * sw_si.dos, 5.43, sw_si.gamma_THz, 2)
    assert dos_distance(sw_si, twice) == pytest.approx(0.0, abs=1e-12)  # shape only


def test_dimenet_model_through_calculator():
    calc = CongenerCalculator(small_potential(cutoff=4.0), device="cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dos = phonon_dos(calc, ase.build.bulk("Si", "diamond", a=5.43, cubic=True),
                         relax=False, mesh=(6, 6, 6))
    finally:
        torch.set_num_threads(previous)
    assert dos.lattice_A == pytest.approx(5.43)
    assert np.abs(dos.gamma_THz[:3]).max() < 0.05
    assert np.trapezoid(dos.dos, dos.frequencies_THz) == pytest.approx(6.0, rel=0.02)


def test_relax_finds_sw_minimum_and_rejects_far_start():
    calc = LammpsSWCalculator("Si")
    relaxed = relax_isotropic(diamond_cell("Si", 5.3), calc)
    assert relaxed.cell.lengths()[0] == pytest.approx(5.431, abs=2e-3)
    with pytest.raises(DataError, match="bound"):
        relax_isotropic(diamond_cell("Si", 4.5), calc)


def test_corresponding_states_scale_every_frequency(sw_si, tmp_path):
    """SW Si with its energy scale x 1.5 and its length scale x 1.1 is the same potential in
    other units: the lattice grows by 1.1 and every frequency by sqrt(1.5) / 1.1 (the Γ
    optical line, and the whole DOS once its frequency axis is rescaled)."""
    line = "Si Si Si  {eps}  {sigma}  1.80  21.0  1.20  -0.333333333333\n" \
           "          7.049556277  0.6022245584  4.0  0.0  0.0\n"
    path = tmp_path / "scaled.sw"
    path.write_text(line.format(eps=2.1683 * 1.5, sigma=2.0951 * 1.1))
    scaled = phonon_dos(LammpsSWCalculator("Si", params_path=path),
                        diamond_cell("Si", sw_si.lattice_A * 1.1))
    ratio = 1.5**0.5 / 1.1
    assert scaled.lattice_A / sw_si.lattice_A == pytest.approx(1.1, rel=1e-4)
    assert scaled.gamma_THz[-1] / sw_si.gamma_THz[-1] == pytest.approx(ratio, rel=1e-3)
    rescaled = PhononDOS(sw_si.frequencies_THz * ratio, sw_si.dos, 0.0, sw_si.gamma_THz, 2)
    assert dos_distance(scaled, rescaled) < 0.05 < dos_distance(scaled, sw_si)
