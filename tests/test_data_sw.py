"""Stillinger-Weber parameters and the LAMMPS calculator: physics checks that can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from congener.data.lammps_runtime import find_libmpi, open_lammps, run_commands
from congener.data.lammps_sw import LammpsSWCalculator, lammps_frame
from congener.data.stillinger_weber import (
    load_sw_params,
    matscipy_sw_calculator,
    read_sw,
    shipped_params_path,
)
from congener.errors import CongenerError, DataError

SI_1985 = dict(epsilon=2.1683, sigma=2.0951, a=1.80, lam=21.0, gamma=1.20,
               costheta0=-0.333333333333, A=7.049556277, B=0.6022245584, p=4.0, q=0.0)


def _distorted(element: str, *, seed: int = 0, reps=(2, 2, 2), cubic: bool = True) -> Atoms:
    """A rattled diamond cell with a general triclinic, rotated, non-lower-triangular cell."""
    a0 = load_sw_params(element).diamond_lattice_constant
    atoms = bulk(element, "diamond", a=a0, cubic=cubic) * reps
    strain = np.array([[1.02, 0.06, -0.03], [0.04, 0.97, 0.05], [-0.02, 0.03, 1.01]])
    rotation = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    atoms.set_cell(atoms.cell.array @ rotation, scale_atoms=True)
    atoms.rattle(0.08, seed=seed + 1)
    return atoms


def _lammps(atoms: Atoms, element: str) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = LammpsSWCalculator(element)
    return atoms


def test_shipped_parameters_are_the_published_sets():
    si = load_sw_params("Si")
    ge = load_sw_params("Ge")
    for name, value in SI_1985.items():
        assert getattr(si, name) == value
        if name not in ("epsilon", "sigma", "lam"):
            assert getattr(ge, name) == value
    assert (ge.epsilon, ge.sigma, ge.lam) == (1.93, 2.181, 31.0)  # Ding & Andersen 1986
    assert "Phys. Rev. B 31, 5262 (1985)" in shipped_params_path("Si").read_text()
    assert "Phys. Rev. B 34, 6987 (1986)" in shipped_params_path("Ge").read_text()


def test_user_file_parsing_and_errors(tmp_path: Path):
    si = load_sw_params("Si")
    ge = load_sw_params("Ge")
    path = tmp_path / "mixed.sw"
    path.write_text(f"# two entries, one per line\n{si.to_line()}\n{ge.to_line()}  # trailing\n")
    entries = read_sw(path)
    assert entries[("Si", "Si", "Si")] == si and entries[("Ge", "Ge", "Ge")] == ge
    assert load_sw_params("Ge", path) == ge
    with pytest.raises(DataError, match="no C C C entry"):
        load_sw_params("C", path)
    with pytest.raises(DataError, match="unknown element 'Qq'"):
        load_sw_params("Qq", path)
    with pytest.raises(DataError, match="no Stillinger-Weber parameters shipped for C"):
        load_sw_params("C")
    bad = tmp_path / "bad.sw"
    for text, message in [("Si Si Si 1 2 3", "14 fields"), ("", "14 fields"),
                          (si.to_line().replace("2.1683", "x"), "could not convert"),
                          (si.to_line().replace("Si Si Si", "Si Zz Si"), "unknown element"),
                          (si.to_line().replace("2.0951", "-1.0", 1), "sigma > 0")]:
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            read_sw(bad)
    with pytest.raises(DataError, match="no such"):
        read_sw(tmp_path / "missing.sw")


@pytest.mark.parametrize("element", ["Si", "Ge"])
def test_ideal_diamond_has_cohesive_energy_two_epsilon_and_no_forces_or_stress(element):
    # Nearest neighbours at the pair minimum 2^(1/6) sigma, second neighbours beyond a·sigma,
    # tetrahedral angles: E = -2 epsilon per atom, zero forces, zero stress.
    p = load_sw_params(element)
    atoms = _lammps(bulk(element, "diamond", a=p.diamond_lattice_constant, cubic=True), element)
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-2 * p.epsilon, abs=1e-10)
    assert np.abs(atoms.get_forces()).max() < 1e-10
    assert np.abs(atoms.get_stress()).max() < 1e-10
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.98, scale_atoms=True)
    squeezed.calc = LammpsSWCalculator(element)
    assert (squeezed.get_stress()[:3] < -1e-3).all()  # compressed: negative (ASE sign)


@pytest.mark.parametrize("element", ["Si", "Ge"])
@pytest.mark.parametrize(("reps", "cubic"), [((2, 2, 2), True), ((1, 1, 1), True),
                                             ((1, 1, 1), False)])
def test_lammps_agrees_with_matscipy(element, reps, cubic):
    # Cells down to the 2-atom primitive one, whose widths (3.1 Å) are below the cutoff.
    atoms = _distorted(element, seed=len(element) + reps[0], reps=reps, cubic=cubic)
    ref = atoms.copy()
    ref.calc = matscipy_sw_calculator(load_sw_params(element))
    lmp = _lammps(atoms, element)
    assert lmp.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(lmp.get_forces(), ref.get_forces(), atol=1e-8)
    np.testing.assert_allclose(lmp.get_stress(), ref.get_stress(), atol=1e-10)


def test_forces_are_minus_the_energy_gradient():
    atoms = _lammps(_distorted("Si", seed=3), "Si")
    forces = atoms.get_forces()
    h = 1e-4
    for i in (0, 17, 42):
        for c in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * h
                moved.calc = atoms.calc
                energies.append(moved.get_potential_energy())
            assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[i, c],
                                                                           abs=1e-5)


def test_stress_is_the_strain_derivative_of_the_energy():
    atoms = _lammps(_distorted("Ge", seed=5), "Ge")
    stress = atoms.get_stress(voigt=False)
    cell, volume, h = atoms.cell.array.copy(), atoms.get_volume(), 1e-5
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] = eps[j, i] = sign * h / 2 if i != j else sign * h
            strained = atoms.copy()
            strained.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
            strained.calc = atoms.calc
            energies.append(strained.get_potential_energy())
        derivative = (energies[0] - energies[1]) / (2 * h) / volume
        assert derivative == pytest.approx(stress[i, j], abs=1e-7)


def test_equivalent_cells_give_the_same_results():
    # Same crystal, cell rows replaced by integer combinations (large tilts) and mirrored.
    atoms = _lammps(_distorted("Si", seed=7, reps=(2, 2, 2)), "Si")
    for combo in ([[1, 0, 0], [2, 1, 0], [1, -1, 1]], [[0, 1, 0], [1, 0, 0], [0, 0, 1]]):
        other = atoms.copy()
        other.set_cell(np.array(combo) @ atoms.cell.array, scale_atoms=False)
        other.calc = LammpsSWCalculator("Si")
        assert other.get_potential_energy() == pytest.approx(atoms.get_potential_energy(),
                                                             abs=1e-9)
        np.testing.assert_allclose(other.get_forces(), atoms.get_forces(), atol=1e-9)
        np.testing.assert_allclose(other.get_stress(), atoms.get_stress(), atol=1e-11)


def test_lammps_frame_is_lower_triangular_with_reduced_tilts():
    cell = np.array([[3.0, 1.0, 0.5], [4.0, 2.0, -1.0], [0.3, -2.0, 5.0]])
    frame = lammps_frame(cell)
    lx, ly = frame.cell[0, 0], frame.cell[1, 1]
    assert np.all(np.diag(frame.cell) > 0) and np.allclose(np.triu(frame.cell, 1), 0)
    assert abs(frame.cell[1, 0]) <= lx / 2 and abs(frame.cell[2, 0]) <= lx / 2
    assert abs(frame.cell[2, 1]) <= ly / 2
    assert abs(np.linalg.det(frame.cell)) == pytest.approx(abs(np.linalg.det(cell)))
    np.testing.assert_allclose(frame.rotation @ frame.rotation.T, np.eye(3), atol=1e-14)


def test_energy_is_linear_in_epsilon_with_a_user_file(tmp_path: Path):
    ge = load_sw_params("Ge")
    path = tmp_path / "Ge2.sw"
    path.write_text(ge.to_line().replace("1.93 ", "3.86 ", 1) + "\n")
    atoms = _distorted("Ge", seed=11, reps=(1, 1, 1))
    ref, doubled = _lammps(atoms, "Ge"), atoms.copy()
    doubled.calc = LammpsSWCalculator("Ge", path)
    assert doubled.get_potential_energy() == pytest.approx(2 * ref.get_potential_energy(),
                                                           rel=1e-12)


def test_calculator_refuses_bad_input(tmp_path: Path):
    with pytest.raises(DataError, match="has no Ge Ge Ge entry"):
        LammpsSWCalculator("Ge", shipped_params_path("Si"))
    calc = LammpsSWCalculator("Ge")
    with pytest.raises(DataError, match="got atoms of Si"):
        calc.get_potential_energy(bulk("Si", "diamond", a=5.43))
    with pytest.raises(DataError, match="3D periodic"):
        calc.get_potential_energy(Atoms("Ge2", positions=[[0, 0, 0], [0, 0, 2.4]]))


def test_lammps_runtime_loads_and_reports_errors_in_one_line():
    assert find_libmpi() is not None
    lmp = open_lammps()
    try:
        with pytest.raises(CongenerError, match="LAMMPS failed on 'pair_style nonsense'") as err:
            run_commands(lmp, ["units metal", "pair_style nonsense"])
        assert "\n" not in str(err.value)
    finally:
        lmp.close()
