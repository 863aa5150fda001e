"""Other codes' data: label keys of extended XYZ files, and ASE databases.

MACE, NequIP and many DFT workflows store labels under their own keys (`REF_energy`,
`REF_forces`, `REF_stress`, `DFT_energy`, a `virial`), where ASE's extended-XYZ reader finds
only `energy`, `forces` and `stress`. `LabelKeys` names the keys of a file; `relabel` moves
the values found there into the labels congener reads, and refuses a structure that lacks a
mapped key by naming it. A virial W (eV, the MACE/NequIP convention) becomes the stress
-W / V (eV/Å³, ASE's sign).

ASE databases (`.db`, SQLite) are a second format: `read_db` / `write_db` keep labels and the
metadata congener uses (temperature, group, source) as key-value pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from ase import Atoms

from congener.errors import ConfigError, DataError


@dataclass(frozen=True)
class LabelKeys:
    """Where a file keeps its labels: per-structure `energy` (eV), per-atom `forces` (eV/Å),
    per-structure `stress` (eV/Å³, ASE sign; 6 Voigt or 9 components) or `virial` (eV)."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"label key {f.name} must be a non-empty name (got {value!r})")

    @property
    def default(self) -> bool:
        """ASE's own keys: nothing to move."""
        return self == LabelKeys()

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "keys") -> LabelKeys:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {where} entry {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known))})")
        return cls(**values)


def _value(atoms: Atoms, key: str, per_atom: bool) -> np.ndarray | float | None:
    table = atoms.arrays if per_atom else atoms.info
    if key in table:
        return table[key]
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    return results.get(key)


def relabel(structures: Sequence[Atoms], keys: LabelKeys, where: str = "input") -> list[Atoms]:
    """The structures with the labels found under `keys` as congener's labels (see module
    doc); `DataError` naming the structure and the missing key."""
    from congener.data.structures import label

    if keys.default:
        return list(structures)
    out = []
    for k, atoms in enumerate(structures):
        name = f"{where}: structure {k}"
        energy = _value(atoms, keys.energy, per_atom=False)
        forces = _value(atoms, keys.forces, per_atom=True)
        missing = [f"{what} key {key!r}" for what, key, value in
                   (("energy", keys.energy, energy), ("forces", keys.forces, forces))
                   if value is None]
        if missing:
            found = sorted({*atoms.info, *(k for k in atoms.arrays
                                           if k not in ("numbers", "positions"))})
            raise DataError(f"{name} has no {' and no '.join(missing)} (it has: "
                            f"{', '.join(found) or 'nothing else'})")
        stress = _stress(atoms, keys, name)
        meta = {m: atoms.info.get(m) for m in ("temperature", "group", "source")}
        new = atoms.copy()
        for key in (keys.energy, keys.stress, keys.virial):
            new.info.pop(key, None)
        if keys.forces not in ("numbers", "positions"):
            new.arrays.pop(keys.forces, None)
        out.append(label(new, energy=float(np.asarray(energy).reshape(())),
                         forces=np.asarray(forces, dtype=float), stress=stress, **meta))
    return out


def _stress(atoms: Atoms, keys: LabelKeys, name: str) -> np.ndarray | None:
    if keys.virial is not None:
        virial = _value(atoms, keys.virial, per_atom=False)
        if virial is None:
            return None
        if atoms.cell.rank != 3:
            raise DataError(f"{name} has a virial but its cell has no volume")
        return -_tensor(virial, name) / atoms.get_volume()
    stress = _value(atoms, keys.stress, per_atom=False)
    return None if stress is None else _tensor(stress, name)


def _tensor(value, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=float).ravel()
    if v.size == 9:
        return v.reshape(3, 3)
    if v.size == 6:
        xx, yy, zz, yz, xz, xy = v
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{name}: a stress or virial has {v.size} components, not 6 or 9")


def read_db(path: str | Path) -> list[Atoms]:
    """Structures of an ASE database with their labels and key-value pairs as `info`."""
    import ase.db

    with ase.db.connect(str(path), type="db") as db:
        out = []
        for row in db.select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            out.append(atoms)
    return out


def write_db(path: str | Path, structures: Iterable[Atoms]) -> None:
    """Write structures (labels as the row's calculator results, scalar `info` entries as
    key-value pairs) to a new ASE database at `path` (replaced if it exists)."""
    import ase.db

    with ase.db.connect(str(path), type="db", append=False) as db:
        for atoms in structures:
            pairs = {k: v for k, v in atoms.info.items()
                     if isinstance(v, str | int | float | bool) and k.isidentifier()}
            db.write(atoms, key_value_pairs=pairs)
