"""Stillinger-Weber energies, forces and stress of `ase.Atoms` through LAMMPS' Python module.

LAMMPS wants a right-handed, lower-triangular cell with small tilts; ASE cells are general.
`lammps_frame` finds an orthogonal map Q with `cell @ Q` lower-triangular, reduces the tilts
by lattice-vector sums (same lattice) and wraps the atoms; results are rotated back with Q.
Everything is read at full double precision through the library interface.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses

from congener.data.lammps_runtime import num, open_lammps, run_commands
from congener.data.stillinger_weber import load_sw_params, resolve_params_path
from congener.data.structures import atomic_number
from congener.errors import CongenerError, DataError

LMP_GLOBAL, LMP_SCALAR, LMP_VECTOR = 0, 0, 1
# `compute pressure NULL virial`: the virial (potential) part only, no kinetic term; see
# `sw_state` for why.
VIRIAL_COMPUTE = "compute congener_virial all pressure NULL virial"


@dataclass(frozen=True)
class LammpsFrame:
    """A cell in LAMMPS form: `cell` [3,3] rows (lx,0,0), (xy,ly,0), (xz,yz,lz) in Å, and the
    orthogonal `rotation` Q [3,3] with r_lammps = r_ase @ Q (a reflection for left-handed cells).
    """

    cell: np.ndarray
    rotation: np.ndarray

    def to_lammps(self, positions: np.ndarray) -> np.ndarray:
        """Cartesian positions [N,3] (Å) rotated into the frame and wrapped into the cell."""
        frac = (positions @ self.rotation) @ np.linalg.inv(self.cell)
        frac -= np.floor(frac)
        frac[frac >= 1.0] = 0.0
        return frac @ self.cell

    def vectors_to_ase(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate vectors [N,3] (e.g. forces) from the LAMMPS frame back to the ASE frame."""
        return vectors @ self.rotation.T

    def tensor_to_ase(self, tensor: np.ndarray) -> np.ndarray:
        """Rotate a rank-2 tensor [3,3] (e.g. stress) back to the ASE frame."""
        return self.rotation @ tensor @ self.rotation.T

    def region_command(self, name: str = "box") -> str:
        """The `region ... prism` command of this cell."""
        c = self.cell
        numbers = (0, c[0, 0], 0, c[1, 1], 0, c[2, 2], c[1, 0], c[2, 0], c[2, 1])
        return f"region {name} prism {' '.join(num(x) for x in numbers)} units box"


def lammps_frame(cell: np.ndarray) -> LammpsFrame:
    """The LAMMPS form of a 3D cell [3,3] (rows are lattice vectors, Å)."""
    cell = np.asarray(cell, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        raise DataError("LAMMPS needs a 3D periodic cell; this one is degenerate")
    q, u = np.linalg.qr(cell.T)
    signs = np.where(np.diag(u) < 0, -1.0, 1.0)
    q = q * signs  # flip columns so that the diagonal of the lower-triangular cell is positive
    lower = cell @ q
    lower = np.where(np.abs(lower) < 1e-13 * np.abs(lower).max(), 0.0, lower)
    lower[0, 1:] = 0.0
    lower[1, 2] = 0.0
    a, b, c = lower
    c = c - np.round(c[1] / b[1]) * b
    c = c - np.round(c[0] / a[0]) * a
    b = b - np.round(b[0] / a[0]) * a
    return LammpsFrame(cell=np.array([a, b, c]), rotation=q)


def pressure_to_stress(pressure: np.ndarray, bar_per_eV_A3: float = 1.0 / units.bar) -> np.ndarray:
    """LAMMPS metal pressure components (bar; pxx pyy pzz pxy pxz pyz; compressive-positive)
    -> ASE stress tensor [3,3] in eV/Å³ (tension-positive).

    Pass LAMMPS' own factor (`extract_global("nktv2p")` = 1602176.5) to undo its conversion
    exactly; ASE's CODATA value differs by 8e-8 relative.
    """
    pxx, pyy, pzz, pxy, pxz, pyz = np.asarray(pressure, dtype=float)
    p = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
    return -p / bar_per_eV_A3


def sw_setup_commands(params_path: Path, element: str) -> list[str]:
    """Mass, pair style, neighbour settings and the virial compute for one element."""
    mass = atomic_masses[atomic_number(element)]
    return [
        f"mass 1 {num(mass)}",
        "pair_style sw",
        f"pair_coeff * * {params_path} {element}",
        "neighbor 1.0 bin",
        "neigh_modify every 1 delay 0 check yes",
        VIRIAL_COMPUTE,
    ]


def sw_state(lmp: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces [N,3] (eV/Å) and virial stress [3,3] (eV/Å³, ASE sign) of the
    current LAMMPS state, in the LAMMPS frame, ordered by atom ID.

    The stress is the virial part only (`compute pressure NULL virial`): a DFT stress, like
    that of the mlearn data, is the strain derivative of the potential energy and contains no
    kinetic (N k T / V) term, and a potential trained on it predicts exactly this part.
    Needs the computes to be current (after `run 0`, or at the last step of a `run`).
    """
    energy = float(lmp.extract_compute("thermo_pe", LMP_GLOBAL, LMP_SCALAR))
    virial = lmp.extract_compute("congener_virial", LMP_GLOBAL, LMP_VECTOR)
    nktv2p = float(lmp.extract_global("nktv2p"))
    stress = pressure_to_stress(np.array([virial[k] for k in range(6)]), nktv2p)
    forces = np.array(lmp.gather_atoms("f", 1, 3), dtype=float).reshape(-1, 3)
    return energy, forces, stress


def _prepare(atoms: Atoms, element: str) -> LammpsFrame:
    if not np.all(atoms.pbc):
        raise DataError("the LAMMPS Stillinger-Weber calculator needs a 3D periodic structure")
    wrong = sorted(set(atoms.get_chemical_symbols()) - {element})
    if wrong:
        raise DataError(f"calculator for {element} got atoms of {', '.join(wrong)}")
    return lammps_frame(atoms.cell.array)


class LammpsSWCalculator(Calculator):
    """ASE calculator: Stillinger-Weber energy (eV), forces (eV/Å) and stress (eV/Å³, virial
    part) of a single-element periodic structure, computed by LAMMPS `pair_style sw`.

    `params_path` is a LAMMPS `.sw` file (default: the one shipped for `element`).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, element: str, params_path: str | Path | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.element = element
        self.params_path = resolve_params_path(element, params_path).resolve()
        self.params = load_sw_params(element, self.params_path)  # DataError if element absent
        self._lmp: Any = None
        self._frame: LammpsFrame | None = None
        self._natoms = 0

    def calculate(self, atoms: Atoms | None = None, properties: Any = None,
                  system_changes: Any = all_changes) -> None:
        """Fill `self.results` for `atoms`."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if self._lmp is None or set(system_changes) - {"positions"} or (
            self._natoms != len(atoms)
        ):
            self._build(atoms)
        assert self._frame is not None
        x = self._frame.to_lammps(atoms.positions)
        self._lmp.scatter_atoms("x", 1, 3, np.ascontiguousarray(x).ctypes)
        run_commands(self._lmp, ["run 0 post no"])
        energy, forces, stress = sw_state(self._lmp)
        full = self._frame.tensor_to_ase(stress)
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": self._frame.vectors_to_ase(forces),
            "stress": full[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
        }

    def _build(self, atoms: Atoms) -> None:
        self.close()
        frame = _prepare(atoms, self.element)
        lmp = open_lammps()
        run_commands(lmp, ["units metal", "atom_style atomic", "boundary p p p",
                           "atom_modify map array", frame.region_command(),
                           "create_box 1 box"])
        # Atoms are created inside the box, then moved to their exact wrapped positions by
        # scatter_atoms (create_atoms would drop an atom that rounds onto the upper face).
        n = len(atoms)
        frac = np.full((n, 3), 0.5)
        start = (frac @ frame.cell).ravel().tolist()
        created = lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, start)
        if created != n:
            lmp.close()
            raise CongenerError(f"LAMMPS created {created} of {n} atoms")
        run_commands(lmp, [*sw_setup_commands(self.params_path, self.element),
                           "thermo_style custom step pe c_congener_virial[1]"])
        self._lmp, self._frame, self._natoms = lmp, frame, n

    def close(self) -> None:
        """Release the LAMMPS instance."""
        if self._lmp is not None:
            self._lmp.close()
            self._lmp = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
