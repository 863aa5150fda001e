"""Phonon density of states with phonopy and any ASE calculator.

Protocol (Röcken & Zavadlav): relax the cubic diamond cell isotropically (energy minimum over
the lattice constant), build the 2x2x2 supercell of the 8-atom conventional cell (64 atoms),
displace atoms by 0.01 Å, fit force constants and integrate the DOS of the primitive cell on a
20x20x20 Γ-centred mesh (tetrahedron method). Frequencies are in THz (phonopy's default units
for eV, Å and amu), the DOS in states per THz per primitive cell, so that it integrates to
3 x (atoms in the primitive cell).

Works with `CongenerCalculator` and with `LammpsSWCalculator` (the Stillinger-Weber reference).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import ase.build
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms
from phonopy.structure.cells import guess_primitive_matrix
from scipy.optimize import minimize_scalar

from congener.bounds import check_float
from congener.errors import DataError

DEFAULT_MESH = (20, 20, 20)
MIN_LATTICE_A, MAX_LATTICE_A = 2.5, 10.0  # diamond cells of any element fit in this range


@dataclass
class PhononDOS:
    """Total phonon DOS of one model.

    frequencies_THz [F] grid (THz); dos [F] states/THz per primitive cell (integrates to
    3 x n_primitive); lattice_A the relaxed lattice constant (Å, length of the first cell
    vector of the relaxed input cell: the cubic a for the conventional diamond cell);
    gamma_THz [3 n_primitive] frequencies at Γ, ascending (THz; negative = imaginary).
    """

    frequencies_THz: np.ndarray
    dos: np.ndarray
    lattice_A: float
    gamma_THz: np.ndarray
    n_primitive: int


def diamond_cell(symbol: str, a: float | None = None) -> Atoms:
    """The 8-atom conventional cubic diamond cell of `symbol` (a in Å; default ASE's).

    `a` must lie in [2.5, 10] Å (diamond C 3.57 Å, α-Sn 6.49 Å): a cell far outside does not
    relax within the ±10 % search, and a tiny or negative one packs thousands of neighbours
    into the cutoff sphere (`ConfigError` outside)."""
    if a is not None:
        a = check_float("lattice constant a (Å)", a, MIN_LATTICE_A, MAX_LATTICE_A)
    try:
        return ase.build.bulk(symbol, "diamond", a=a, cubic=True)
    except (ValueError, KeyError) as exc:
        raise DataError(f"no diamond cell for {symbol!r}: {exc}") from exc


def relax_isotropic(atoms: Atoms, calc: Calculator, *, max_strain: float = 0.1,
                    tol: float = 1e-6) -> Atoms:
    """A copy of `atoms` scaled isotropically to the energy minimum of `calc`.

    Internal coordinates are scaled with the cell (exact for high-symmetry cells such as
    diamond, where they are fixed by symmetry). The scale factor s is searched in
    [1 - max_strain, 1 + max_strain] to a relative tolerance `tol`.
    """
    base = atoms.copy()

    def energy(scale: float) -> float:
        trial = base.copy()
        trial.set_cell(base.cell.array * scale, scale_atoms=True)
        trial.calc = calc
        return float(trial.get_potential_energy())

    res = minimize_scalar(energy, bounds=(1.0 - max_strain, 1.0 + max_strain),
                          method="bounded", options={"xatol": tol})
    if not np.isfinite(res.fun):
        raise DataError("lattice relaxation failed: the calculator returned a non-finite energy")
    if abs(res.x - 1.0) > 0.999 * max_strain:
        raise DataError(f"lattice relaxation hit the search bound (scale {res.x:.4f}); start "
                        "from a better lattice constant")
    out = base.copy()
    out.set_cell(base.cell.array * res.x, scale_atoms=True)
    return out


def _to_phonopy(atoms: Atoms) -> PhonopyAtoms:
    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions())


def _to_ase(cell: PhonopyAtoms) -> Atoms:
    return Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def force_constants(atoms: Atoms, calc: Calculator, *, supercell: int = 2,
                    displacement_A: float = 0.01) -> Phonopy:
    """A `Phonopy` object with force constants of `atoms` from finite displacements.

    The supercell is `supercell` x the input cell in each direction; the primitive cell is
    found by symmetry. Net forces on each displaced supercell (numerical drift) are removed.
    """
    if not np.all(atoms.pbc):
        raise DataError("phonons need a 3D periodic structure")
    unit = _to_phonopy(atoms)
    primitive = guess_primitive_matrix(unit)
    phonon = Phonopy(unit, supercell_matrix=supercell * np.eye(3, dtype=int),
                     primitive_matrix=primitive)
    phonon.generate_displacements(distance=displacement_A)
    forces = []
    for displaced in phonon.supercells_with_displacements:
        trial = _to_ase(displaced)
        trial.calc = calc
        f = np.asarray(trial.get_forces(), dtype=float)
        if not np.all(np.isfinite(f)):
            raise DataError("the calculator returned non-finite forces for a displaced cell")
        forces.append(f - f.mean(axis=0))
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    return phonon


def frequencies_at(phonon: Phonopy, q: tuple[float, float, float]) -> np.ndarray:
    """Frequencies [3 n_primitive] (THz, ascending) at reduced wave vector `q` of the
    primitive reciprocal lattice."""
    return np.sort(np.asarray(phonon.run_qpoints([list(q)]).frequencies[0], dtype=float))


def total_dos(phonon: Phonopy, *, mesh: tuple[int, int, int] = DEFAULT_MESH,
              pitch_THz: float | None = None, sigma_THz: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies [F] THz, DOS [F] states/THz per primitive cell) on a Γ-centred mesh;
    tetrahedron method unless a Gaussian smearing `sigma_THz` is given. The grid spacing is
    `pitch_THz`, by default phonopy's (1/200 of the frequency range)."""
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    dos = phonon.run_total_dos(sigma=sigma_THz, freq_pitch=pitch_THz,
                               use_tetrahedron_method=sigma_THz is None)
    return np.asarray(dos.frequency_points, dtype=float), np.asarray(dos.dos, dtype=float)


def phonon_dos(calc: Calculator, structure: Atoms | str, *, relax: bool = True,
               supercell: int = 2, displacement_A: float = 0.01,
               mesh: tuple[int, int, int] = DEFAULT_MESH, pitch_THz: float | None = None,
               sigma_THz: float | None = None) -> PhononDOS:
    """Phonon DOS of `structure` (an element symbol: its cubic diamond cell) under `calc`.

    With `relax`, the cell is first scaled isotropically to the energy minimum.
    """
    atoms = diamond_cell(structure) if isinstance(structure, str) else structure.copy()
    if relax:
        atoms = relax_isotropic(atoms, calc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        phonon = force_constants(atoms, calc, supercell=supercell,
                                 displacement_A=displacement_A)
        freqs, dos = total_dos(phonon, mesh=mesh, pitch_THz=pitch_THz, sigma_THz=sigma_THz)
        gamma = frequencies_at(phonon, (0.0, 0.0, 0.0))
    return PhononDOS(frequencies_THz=freqs, dos=dos, lattice_A=float(atoms.cell.lengths()[0]),
                     gamma_THz=gamma, n_primitive=len(phonon.primitive))


def _normalised(freqs: np.ndarray, dos: np.ndarray, grid: np.ndarray) -> np.ndarray:
    g = np.interp(grid, freqs, np.clip(dos, 0.0, None), left=0.0, right=0.0)
    area = np.trapezoid(g, grid)
    if not area > 0:
        raise DataError("cannot normalise a DOS with zero area")
    return g / area


def dos_distance(a: PhononDOS, b: PhononDOS) -> float:
    """L1 distance between two DOS curves after normalising each to unit area.

    d = ∫ |g_a(ν) - g_b(ν)| dν on a common grid (the union of both ranges at the finer
    pitch; each curve is zero outside its own range). Symmetric, 0 for identical curves and
    at most 2 for curves that do not overlap; independent of the number of atoms per cell.
    """
    pitch = min(np.diff(a.frequencies_THz).min(), np.diff(b.frequencies_THz).min())
    lo = min(a.frequencies_THz[0], b.frequencies_THz[0])
    hi = max(a.frequencies_THz[-1], b.frequencies_THz[-1])
    grid = np.linspace(lo, hi, int(np.ceil((hi - lo) / pitch)) + 1)
    ga = _normalised(a.frequencies_THz, a.dos, grid)
    gb = _normalised(b.frequencies_THz, b.dos, grid)
    return float(np.trapezoid(np.abs(ga - gb), grid))
