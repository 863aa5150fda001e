"""LAMMPS driven by a congener potential through `fix external`: NVE agrees with congener's own
integrator, forces and pressure reach LAMMPS unchanged on rotated and left-handed triclinic
cells, and bad input fails in one line."""

from __future__ import annotations

import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.lammps.coordinatetransform import Prism

from congener.errors import ConfigError, CongenerError, DataError, SimulationUnstable
from congener.graph import build_graph
from congener.models.checkpoint import save_potential
from congener.simulation.lammps_md import run_lammps
from congener.simulation.md import md_init, run_md, system_seeds
from tests.conftest import rattled_diamond, small_potential
from tests.test_simulation_md import PairSprings

NKTV2P = 1.6021765e6  # LAMMPS metal eV/Å³ -> bar (its own constant; CODATA's differs by 8e-8)
PRESSURE_KEYS = ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")


def _triclinic(handedness: str):
    """8-atom rattled Si in a cell that LAMMPS must rotate (and reflect) and tilt-reduce."""
    atoms = rattled_diamond("Si", amount=0.08, seed=1)
    cell = atoms.cell.array.copy()
    cell[2] += 0.8 * cell[0]  # a tilt beyond half a box length: LAMMPS gets a reduced cell
    atoms.set_cell(cell, scale_atoms=False)
    atoms.rotate(35, "x", rotate_cell=True)
    atoms.rotate(-50, "z", rotate_cell=True)
    if handedness == "left":
        atoms.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=False)
    return atoms


def test_nve_matches_congener_integrator():
    """100 velocity-Verlet steps of rattled 64-atom Si (1 fs) in LAMMPS and in `run_md`
    (friction 0) from the same positions and velocities agree to 1e-7 Å and 1e-7 eV.

    Both integrate the same forces with the same algorithm; what differs is LAMMPS's metal
    force-to-acceleration constant (5.5e-8 relative to ASE's CODATA 2014 one) and
    round-off, which give ~1e-9 Å here. An integrator or unit error (a missing half kick,
    Å/fs for Å/ps) moves atoms by >= 1e-3 Å."""
    potential = small_potential(("Si",), cutoff=4.0)
    atoms = rattled_diamond("Si", reps=(2, 2, 2))
    md = dict(temperature_K=600.0, timestep_fs=1.0, steps=100, friction_per_ps=0.0, seed=0,
              sample_every=10, stability_check=False, threads=1)
    ours = run_md(potential, [atoms], **md).trajectories[0]
    start = md_init([atoms], potential, temperature_K=600.0, seed=system_seeds(0, 1))
    atoms.set_momenta(start.momenta.numpy())
    lammps = run_lammps(potential, atoms, ["fix nve all nve", "timestep 0.001", "thermo 10",
                                           "run 100"], threads=1)
    thermo = lammps.thermo[0]
    assert ours.steps == thermo["Step"].astype(int).tolist() == list(range(0, 101, 10))
    moved = np.abs(ours.positions[-1] - ours.positions[0]).max()
    assert moved > 0.3  # a real trajectory, unwrapped in both
    np.testing.assert_allclose(lammps.atoms.positions, ours.positions[-1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(thermo["PotEng"], ours.potential_energy_eV, rtol=0, atol=1e-7)
    # both conserve total energy to far below its potential-energy swings
    assert np.ptp(ours.potential_energy_eV) > 0.02
    assert np.ptp(thermo["TotEng"]) < 1e-4 and np.ptp(ours.total_energy_eV) < 1e-4


@pytest.mark.parametrize("handedness", ["right", "left"])
def test_lammps_gets_the_potentials_forces_energy_and_pressure(handedness):
    """After `run 0` (atoms at rest): LAMMPS's per-atom forces, rotated back, are the
    potential's; pe is its energy; the pressure tensor is -stress in bar, so press is
    -trace(stress)/3 (compressive positive, LAMMPS's sign) and its off-diagonal parts survive
    the rotation."""
    potential = small_potential(("Si",), cutoff=4.0)
    atoms = _triclinic(handedness)
    rotation = Prism(atoms.cell.array, reduce_cell=True).rot_mat
    assert not np.allclose(np.abs(rotation), np.eye(3))  # the frame test is not trivial
    ref = potential(build_graph(atoms, potential.cutoff), stress=True)
    thermo = ("thermo_style custom step pe press " + " ".join(PRESSURE_KEYS).lower(),
              "thermo_modify format float %.17g")
    result = run_lammps(potential, atoms, [*thermo, "run 0"], threads=1)
    np.testing.assert_allclose(result.lammps_forces, ref.forces.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.atoms.get_forces(), ref.forces.numpy(), rtol=0,
                               atol=1e-10)
    np.testing.assert_allclose(result.atoms.positions, atoms.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.atoms.cell.array, atoms.cell.array, rtol=0, atol=1e-12)
    row = {k: float(v[0]) for k, v in result.thermo[0].items()}
    assert row["PotEng"] == pytest.approx(float(ref.energy[0]), abs=1e-10)
    stress = ref.stress[0].numpy()
    assert row["Press"] == pytest.approx(-np.trace(stress) / 3 * NKTV2P, rel=1e-10)
    xx, yy, zz, xy, xz, yz = (row[k] for k in PRESSURE_KEYS)
    pressure = rotation @ np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]) @ rotation.T
    np.testing.assert_allclose(pressure, -stress * NKTV2P, rtol=0,
                               atol=1e-9 * np.abs(stress).max() * NKTV2P)
    assert np.abs(stress - np.diag(np.diag(stress))).max() > 1e-5  # shear is tested too


def _ge_for_si():
    return small_potential(("Si",)), ase.build.bulk("Ge", "diamond", a=5.65, cubic=True)


def _molecule():
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.pbc = False
    return small_potential(("Si",)), atoms


def _si():
    return ase.build.bulk("Si", "diamond", a=5.43, cubic=True)


@pytest.mark.parametrize("case, commands, error, message", [
    (_ge_for_si, ["run 1"], DataError, "model knows Si; structure contains Ge"),
    (_molecule, ["run 1"], DataError, "needs a 3D periodic structure"),
    (lambda: (small_potential(("Si",)), _si()), ["units real"], ConfigError,
     "'units' is not allowed"),
    (lambda: (small_potential(("Si",)), _si()), ["fix congener all nve"], ConfigError,
     "reserved"),
    (lambda: (small_potential(("Si",)), _si()), ["fix 1 all nvx"], CongenerError,
     "LAMMPS failed on 'fix 1 all nvx': ERROR: Unrecognized fix style 'nvx'"),
    (lambda: (PairSprings(), _si()), ["run 0"], ConfigError, "gives no stress"),
    (lambda: (PairSprings(nan_species=14), _si()), ["fix nve all nve", "run 5", "run 5"],
     SimulationUnstable, "non-finite energy or forces at LAMMPS step 0"),
])
def test_bad_input_fails_in_one_line(case, commands, error, message):
    potential, atoms = case()
    with pytest.raises(error, match=message) as info:
        run_lammps(potential, atoms, commands, threads=1)
    assert "\n" not in str(info.value)


def test_cli_writes_thermo_and_final_structure(tmp_path, invoke):
    model = save_potential(tmp_path / "m.pt", small_potential(("Si",), cutoff=4.0))
    structure = tmp_path / "si.extxyz"
    ase.io.write(structure, rattled_diamond("Si"))
    script = tmp_path / "nve.in"
    script.write_text("# NVE\nvelocity all create 300 1\nfix nve all nve\nthermo 5\nrun 10\n")
    res = invoke("lammps", model, "--structure", structure, "--input", script,
                 "--threads", 1, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    rows = np.genfromtxt(tmp_path / "out" / "thermo.csv", delimiter=",", names=True)
    assert rows["Step"].tolist() == [0, 5, 10] and rows["run"].tolist() == [1, 1, 1]
    final = ase.io.read(tmp_path / "out" / "final.extxyz")
    assert final.get_potential_energy() == pytest.approx(rows["PotEng"][-1], abs=1e-9)
    assert np.abs(final.get_velocities()).max() > 0
    script.write_text("fix 1 all nvx\n")
    res = invoke("lammps", model, "--structure", structure, "--input", script,
                 "-o", tmp_path / "bad")
    assert res.exit_code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: LAMMPS failed on 'fix 1 all nvx': ERROR: Unrecognized fix style 'nvx'")
