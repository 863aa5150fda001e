"""What a data set holds: counts by group and temperature, sizes, label ranges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from congener.data.structures import elements_of, energy_of, forces_of, stress_of


@dataclass(frozen=True)
class DataSummary:
    """Summary of labelled structures.

    counts: number of structures per (group, temperature in K or None).
    energy_per_atom_eV: (min, max) of E/N. force_component_eV_A: (min, max) of all force
    components; max_force_eV_A: largest per-atom force norm.
    """

    n_structures: int
    n_atoms_total: int
    atoms_per_structure: tuple[int, int]
    elements: list[str]
    counts: dict[tuple[str, float | None], int]
    energy_per_atom_eV: tuple[float, float]
    force_component_eV_A: tuple[float, float]
    max_force_eV_A: float
    n_with_stress: int
    n_with_momenta: int

    def lines(self) -> list[str]:
        """Human-readable lines (used by `congener data info`)."""
        lo, hi = self.atoms_per_structure
        out = [
            f"structures: {self.n_structures}, atoms: {self.n_atoms_total} "
            f"({lo}-{hi} per structure), elements: {' '.join(self.elements)}",
            f"energy per atom: {self.energy_per_atom_eV[0]:.4f} .. "
            f"{self.energy_per_atom_eV[1]:.4f} eV",
            f"force components: {self.force_component_eV_A[0]:.3f} .. "
            f"{self.force_component_eV_A[1]:.3f} eV/Å, largest |F|: {self.max_force_eV_A:.3f} eV/Å",
            f"with stress: {self.n_with_stress}, with velocities: {self.n_with_momenta}",
            "group / temperature (K): count",
        ]
        for (group, temp), n in self.counts.items():
            label = "-" if temp is None else f"{temp:g}"
            out.append(f"  {group:<12} {label:>8}: {n}")
        return out


def summarize(structures: Sequence[Atoms]) -> DataSummary:
    """Summary of a non-empty list of labelled structures."""
    sizes = [len(a) for a in structures]
    e_per_atom = [energy_of(a) / len(a) for a in structures]
    forces = np.concatenate([forces_of(a) for a in structures])
    counts = Counter(
        (str(a.info.get("group", "unknown")), _temperature(a)) for a in structures
    )
    order = sorted(counts, key=lambda k: (k[0], k[1] is None, k[1] or 0.0))
    return DataSummary(
        n_structures=len(structures),
        n_atoms_total=int(sum(sizes)),
        atoms_per_structure=(min(sizes), max(sizes)),
        elements=elements_of(structures),
        counts={k: counts[k] for k in order},
        energy_per_atom_eV=(min(e_per_atom), max(e_per_atom)),
        force_component_eV_A=(float(forces.min()), float(forces.max())),
        max_force_eV_A=float(np.linalg.norm(forces, axis=1).max()),
        n_with_stress=sum(stress_of(a) is not None for a in structures),
        n_with_momenta=sum("momenta" in a.arrays for a in structures),
    )


def _temperature(atoms: Atoms) -> float | None:
    value = atoms.info.get("temperature")
    return None if value is None else float(value)
