"""Reader for the mlearn DFT data of Zuo et al., J. Phys. Chem. A 124, 731 (2020).

Each file is a JSON list of entries with a pymatgen `Structure.as_dict()` under `structure`,
`outputs.energy` (total energy, eV), `outputs.forces` (eV/Å) and `outputs.virial_stress`
(kbar, VASP order xx yy zz xy yz xz, VASP sign: positive = compressive). The reader returns
labelled `ase.Atoms` (stress in eV/Å³, ASE sign and Voigt order) with `info` keys `group`,
`temperature` (K, where the description names one), `source` and `description`.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from congener.data.structures import atomic_number, label
from congener.errors import DataError

SURFACE_GROUP = "Surface"
_TEMPERATURE = re.compile(r"\bat\s+(\d+(?:\.\d+)?)\s*K\b")
# VASP/mlearn order [xx, yy, zz, xy, yz, xz] -> ASE Voigt order [xx, yy, zz, yz, xz, xy].
_VASP_TO_ASE_VOIGT = [0, 1, 2, 4, 5, 3]
KBAR = 0.1 * units.GPa  # eV/Å³ per kbar


class MlearnSplit(StrEnum):
    """The two files of an mlearn element folder."""

    train = "train"
    test = "test"

    @property
    def file_name(self) -> str:
        """File name of this split inside an element folder."""
        return "training.json" if self is MlearnSplit.train else "test.json"


def virial_to_stress(virial_kbar: Any) -> np.ndarray:
    """mlearn `virial_stress` (kbar, VASP order and sign) -> ASE Voigt stress in eV/Å³.

    sigma_ASE = -virial * 0.1 GPa: VASP reports pressure-like (compressive-positive) values,
    ASE stress is tension-positive.
    """
    virial = np.asarray(virial_kbar, dtype=float)
    if virial.shape != (6,):
        raise ValueError(f"virial_stress has shape {virial.shape}, expected (6,)")
    return -virial[_VASP_TO_ASE_VOIGT] * KBAR


def temperature_from_description(description: str) -> float | None:
    """Temperature in K named in a description such as '... simulation at 300 K', or None."""
    match = _TEMPERATURE.search(description)
    return float(match.group(1)) if match else None


def _lookup(entry: Any, *keys: str) -> Any:
    value = entry
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise KeyError(".".join(keys))
        value = value[key]
    return value


def _structure(struct: Any) -> Atoms:
    cell = np.asarray(_lookup(struct, "lattice", "matrix"), dtype=float)
    sites = _lookup(struct, "sites")
    if cell.shape != (3, 3) or not isinstance(sites, list) or not sites:
        raise ValueError("structure needs a 3x3 lattice.matrix and a non-empty list of sites")
    symbols, positions = [], []
    for k, site in enumerate(sites):
        species = _lookup(site, "species")
        if len(species) != 1 or float(species[0].get("occu", 1.0)) != 1.0:
            raise ValueError(f"site {k} is disordered (partial occupancy is not supported)")
        symbols.append(str(species[0]["element"]))
        if "xyz" in site:
            positions.append(np.asarray(site["xyz"], dtype=float))
        else:
            positions.append(np.asarray(site["abc"], dtype=float) @ cell)
    for symbol in set(symbols):
        atomic_number(symbol)
    return Atoms(symbols=symbols, positions=np.array(positions), cell=cell, pbc=True)


def mlearn_entry_to_atoms(entry: Any, *, source: str = "mlearn") -> Atoms:
    """One mlearn entry as labelled `Atoms`; raises KeyError/ValueError/TypeError on bad input."""
    atoms = _structure(_lookup(entry, "structure"))
    forces = np.asarray(_lookup(entry, "outputs", "forces"), dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    virial = _lookup(entry, "outputs").get("virial_stress")  # optional
    description = str(entry.get("description", ""))
    label(
        atoms,
        energy=float(_lookup(entry, "outputs", "energy")),
        forces=forces,
        stress=None if virial is None else virial_to_stress(virial),
        temperature=temperature_from_description(description),
        group=str(entry.get("group", "unknown")),
        source=source,
    )
    if description:
        atoms.info["description"] = description
    return atoms


def read_mlearn_file(path: str | Path, *, surfaces: bool = True) -> list[Atoms]:
    """All entries of one mlearn JSON file (optionally without the `Surface` group)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    structures = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {index} is not a JSON object")
        if not surfaces and entry.get("group") == SURFACE_GROUP:
            continue
        source = f"mlearn:{path.parent.name}/{path.name}:{index}"
        try:
            structures.append(mlearn_entry_to_atoms(entry, source=source))
        except KeyError as exc:
            raise DataError(f"{path}: entry {index} lacks key {exc.args[0]!r}") from exc
        except (ValueError, TypeError, DataError) as exc:
            raise DataError(f"{path}: entry {index}: {exc}") from exc
    if not structures:
        raise DataError(f"{path} holds no structures")
    return structures


def read_mlearn(
    path: str | Path, *, split: MlearnSplit | str | None = None, surfaces: bool = True
) -> list[Atoms]:
    """Labelled structures from an mlearn JSON file, or from one split of an element folder.

    `path` is a JSON file (then `split` must be None) or a folder holding `training.json` and
    `test.json` (then `split` is "train" or "test"). `surfaces=False` drops the slabs.
    """
    path = Path(path)
    if path.is_dir():
        if split is None:
            raise DataError(f"{path} is a folder: choose split 'train' or 'test'")
        return read_mlearn_file(path / _split(split).file_name, surfaces=surfaces)
    if split is not None:
        raise DataError(f"{path} is a file; a split applies only to a folder")
    return read_mlearn_file(path, surfaces=surfaces)


def read_mlearn_splits(folder: str | Path, *, surfaces: bool = True) -> dict[str, list[Atoms]]:
    """Both splits of an mlearn element folder: {"train": [...], "test": [...]}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}")
    return {s.value: read_mlearn(folder, split=s, surfaces=surfaces) for s in MlearnSplit}


def _split(split: MlearnSplit | str) -> MlearnSplit:
    try:
        return MlearnSplit(split)
    except ValueError as exc:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'") from exc
