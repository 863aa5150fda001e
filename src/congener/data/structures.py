"""One in-memory representation of a labelled structure: `ase.Atoms`.

Labels travel as an ASE `SinglePointCalculator` (energy in eV, forces in eV/Å, stress in
eV/Å³ in ASE's sign convention: positive = tensile, Voigt order xx yy zz yz xz xy), so that
extended XYZ round-trips them with `ase.io`. Metadata lives in `atoms.info`:
`temperature` (K, when known), `group` (AIMD-NVT, Elastic, Vacancy, Surface, SW-MD, ...)
and `source` (where the structure came from).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers

from congener.errors import DataError

if TYPE_CHECKING:
    from congener.data.formats import LabelKeys

META_KEYS = ("temperature", "group", "source")


def label(
    atoms: Atoms,
    *,
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray | None = None,
    temperature: float | None = None,
    group: str | None = None,
    source: str | None = None,
) -> Atoms:
    """Attach reference energy (eV), forces [N,3] (eV/Å), stress (eV/Å³) and metadata.

    `stress` may be a 3x3 tensor or 6 Voigt components (xx yy zz yz xz xy), ASE sign.
    Returns the same `atoms` object.
    """
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise DataError(f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    results: dict[str, object] = {"energy": float(energy), "forces": forces}
    if stress is not None:
        results["stress"] = _voigt(np.asarray(stress, dtype=float))
    atoms.calc = SinglePointCalculator(atoms, **results)
    for key, value in (("temperature", temperature), ("group", group), ("source", source)):
        if value is not None:
            atoms.info[key] = float(value) if key == "temperature" else str(value)
    return atoms


def _voigt(stress: np.ndarray) -> np.ndarray:
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if stress.shape == (6,):
        return stress
    raise DataError(f"stress has shape {stress.shape}, expected (3, 3) or (6,)")


def energy_of(atoms: Atoms) -> float:
    """Reference total energy in eV; `DataError` if the structure carries none."""
    return float(_result(atoms, "energy"))


def forces_of(atoms: Atoms) -> np.ndarray:
    """Reference forces [N,3] in eV/Å; `DataError` if the structure carries none."""
    return np.asarray(_result(atoms, "forces"), dtype=float)


def stress_of(atoms: Atoms) -> np.ndarray | None:
    """Reference stress as a 3x3 tensor in eV/Å³ (ASE sign), or None if absent."""
    calc = atoms.calc
    if calc is None or "stress" not in getattr(calc, "results", {}):
        return None
    v = np.asarray(calc.results["stress"], dtype=float)
    if v.shape == (3, 3):
        return v
    if v.shape != (6,):
        raise DataError(f"stress has shape {v.shape}, expected (3, 3) or 6 Voigt components")
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


LABEL_KEYS = ("energy", "forces", "stress")
_LABEL_WORDS = ("energy", "energies", "force", "stress", "virial")


def _result(atoms: Atoms, key: str) -> object:
    calc = atoms.calc
    if calc is None or key not in getattr(calc, "results", {}):
        raise DataError(f"{atoms.get_chemical_formula()} carries no reference {key} "
                        f"({_label_keys_found(atoms)})")
    return calc.results[key]


def _label_keys_found(atoms: Atoms) -> str:
    """What was looked for (the calculator results that ASE's extended-XYZ reader fills from
    `energy=`, `stress=` and a `forces` column) and which label-like keys the structure holds
    instead (in atoms.info, atoms.arrays or the calculator)."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    found = [f"{k} (calculator)" for k in results if k not in LABEL_KEYS and _label_like(k)]
    found += [f"{k} (info)" for k in atoms.info if _label_like(k)]
    found += [f"{k} (arrays)" for k in atoms.arrays if _label_like(k)]
    looked = ("looked for the calculator's energy, forces and stress, which extended XYZ "
              "stores as energy=, stress= and a forces column")
    if not found:
        return f"{looked}; no other label-like keys found"
    return f"{looked}; found only {', '.join(found)}"


def _label_like(key: object) -> bool:
    text = str(key).lower()
    return str(key) not in META_KEYS and any(word in text for word in _LABEL_WORDS)


def periodic_cell_problem(atoms: Atoms) -> str | None:
    """Why the cell cannot carry the periodic axes (no independent vector for each), or None.
    Open axes may have any vector, zero included."""
    rows = atoms.cell.array[atoms.pbc]
    if len(rows) and np.linalg.matrix_rank(rows) < len(rows):
        return (f"is periodic along {atoms.pbc.tolist()} but has no independent cell vector "
                "for each periodic axis")
    return None


def shortest_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance in Å, periodic images included (an atom and its own
    image count); inf for a structure without any pair (one atom, no periodic axis)."""
    from congener.graph import neighbour_list  # graph imports this module

    positions = atoms.positions
    bounds = [float(np.linalg.norm(row)) for row in atoms.cell.array[atoms.pbc]]
    if len(atoms) >= 2:
        bounds.append(float(np.linalg.norm(positions[1] - positions[0])))
    if len(atoms) == 0 or not bounds:
        return float("inf")
    bound = max(min(bounds) * (1 + 1e-9), 0.01)  # at least one pair lies within it
    cutoff = min(2.0, bound)
    while True:  # grow the cutoff until a pair is found: small lists for dense structures
        edges, shifts = neighbour_list(atoms, cutoff)
        if edges.shape[1]:
            vectors = (positions[edges[1]] - positions[edges[0]]
                       + shifts @ atoms.cell.array)
            return float(np.linalg.norm(vectors, axis=1).min())
        if cutoff >= bound:
            return float("inf")
        cutoff = min(2 * cutoff, bound)


def validate(structures: Sequence[Atoms], *, where: str = "input", labelled: bool = True
             ) -> None:
    """Raise `DataError` naming the first structure (by index in `where`) with missing or
    non-finite labels (unless `labelled` is False: geometry only) or positions, a dummy atom
    X (atomic number 0), or a cell that cannot hold its periodic axes."""
    for k, atoms in enumerate(structures):
        name = f"{where}: structure {k}"
        dummies = np.flatnonzero(atoms.numbers == 0)
        if len(dummies):
            raise DataError(f"{name} holds {len(dummies)} dummy atom(s) X (atomic number 0), "
                            f"the first at index {int(dummies[0])}; give every atom an element")
        if not labelled:
            _check_geometry(atoms, name)
            continue
        try:
            e, f, s = energy_of(atoms), forces_of(atoms), stress_of(atoms)
        except DataError as exc:
            raise DataError(f"{name}: {exc}") from None
        if not np.isfinite(e):
            raise DataError(f"{name} has a non-finite energy ({e})")
        if not np.all(np.isfinite(f)):
            bad = int(np.argwhere(~np.isfinite(f))[0, 0])
            raise DataError(f"{name} has a non-finite force on atom {bad}")
        if s is not None and not np.all(np.isfinite(s)):
            raise DataError(f"{name} has a non-finite stress")
        _check_geometry(atoms, name)


def _check_geometry(atoms: Atoms, name: str) -> None:
    if not np.all(np.isfinite(atoms.positions)):
        raise DataError(f"{name} has non-finite positions")
    problem = periodic_cell_problem(atoms)
    if problem:
        raise DataError(f"{name} {problem}")


def read_structures(path: str | Path, index: str = ":", keys: LabelKeys | None = None,
                    *, labelled: bool = True) -> list[Atoms]:
    """Read labelled structures (extended XYZ, an ASE database `.db`, or any format ASE reads)
    and validate them. `keys` names labels stored under other keys (`REF_energy`, a virial,
    ...: see `data.formats.LabelKeys`). `labelled=False` reads geometries (labels optional)."""
    from congener.data.formats import read_db, relabel

    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a structure file")
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        if path.suffix == ".db":
            structures = read_db(path)
            structures = structures if index == ":" else structures[int(index)]
        else:
            structures = ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types for malformed files
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures:
        raise DataError(f"{path} holds no structures")
    if keys is not None and labelled:
        structures = relabel(structures, keys, where=str(path))
    validate(structures, where=str(path), labelled=labelled)
    return list(structures)


def write_structures(path: str | Path, structures: Iterable[Atoms]) -> Path:
    """Write structures with labels and metadata to extended XYZ, or to an ASE database when
    `path` ends in .db (atomic via a temp file)."""
    from congener.data.formats import write_db
    from congener.files import atomic_write, output_file

    path = output_file(path, "")
    with atomic_write(path) as tmp:
        if path.suffix == ".db":
            write_db(tmp, structures)
        else:
            ase.io.write(tmp, list(structures), format="extxyz")
    return path


def elements_of(structures: Iterable[Atoms]) -> list[str]:
    """Sorted chemical symbols present in the structures (by atomic number)."""
    zs = sorted({int(z) for a in structures for z in a.numbers})
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in zs]


def atomic_number(symbol: str) -> int:
    """Atomic number of a chemical symbol; `DataError` for an unknown one."""
    z = atomic_numbers.get(symbol)
    if z is None or z == 0:
        raise DataError(f"unknown element {symbol!r}")
    return z


def file_hash_of(path: str | Path) -> str:
    """Short SHA-256 of a file's bytes (identifies training data in checkpoints)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def density_g_cm3(atoms: Atoms) -> float:
    """Mass density of a periodic cell in g/cm³."""
    return float(atoms.get_masses().sum() / units.mol / atoms.get_volume() * 1e24)


def scale_to_density(atoms: Atoms, density: float) -> Atoms:
    """A copy of `atoms` with its cell (and the positions with it) scaled isotropically to
    `density` g/cm³."""
    out = atoms.copy()
    out.set_cell(out.cell * (density_g_cm3(atoms) / density) ** (1 / 3), scale_atoms=True)
    return out
