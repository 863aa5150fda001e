"""What a data set holds: counts by group and temperature, sizes, label ranges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from congener.data.structures import (
    elements_of,
    energy_of,
    forces_of,
    shortest_distance,
    stress_of,
)

MIN_DISTANCE_A = 0.5
"""Default threshold (Å) below which `summarize` flags a pair of atoms as overlapping: well
below any chemical bond (the shortest, H2, is 0.74 Å), so a flagged pair is broken data."""


@dataclass(frozen=True)
class DataSummary:
    """Summary of labelled structures.

    counts: number of structures per (group, temperature in K or None).
    energy_per_atom_eV: (min, max) of E/N. force_component_eV_A: (min, max) of all force
    components; max_force_eV_A: largest per-atom force norm.
    shortest_distance_A / shortest_at: the shortest interatomic distance over all structures
    (periodic images included; inf if no structure has a pair) and the index of its structure.
    too_close: (index, shortest distance in Å) of every structure with a pair closer than
    `min_distance_A`.
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
    shortest_distance_A: float = float("inf")
    shortest_at: int | None = None
    too_close: tuple[tuple[int, float], ...] = ()
    min_distance_A: float = MIN_DISTANCE_A

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
            f"shortest interatomic distance: {self.shortest_distance_A:.3f} Å"
            + ("" if self.shortest_at is None else f" (structure {self.shortest_at})"),
        ]
        if self.too_close:
            listed = ", ".join(f"{k} ({d:.3f} Å)" for k, d in self.too_close[:20])
            more = f" and {len(self.too_close) - 20} more" if len(self.too_close) > 20 else ""
            out.append(f"WARNING: {len(self.too_close)} structure(s) with atoms closer than "
                       f"{self.min_distance_A:g} Å (overlapping atoms), by index: "
                       f"{listed}{more}")
        out.append("group / temperature (K): count")
        for (group, temp), n in self.counts.items():
            label = "-" if temp is None else f"{temp:g}"
            out.append(f"  {group:<12} {label:>8}: {n}")
        return out


def summarize(structures: Sequence[Atoms], *, min_distance: float = MIN_DISTANCE_A
              ) -> DataSummary:
    """Summary of a non-empty list of labelled structures; structures with a pair of atoms
    closer than `min_distance` (Å, periodic images included) are listed in `too_close`."""
    sizes = [len(a) for a in structures]
    distances = [shortest_distance(a) for a in structures]
    closest = int(np.argmin(distances))
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
        shortest_distance_A=distances[closest],
        shortest_at=closest if np.isfinite(distances[closest]) else None,
        too_close=tuple((k, d) for k, d in enumerate(distances) if d < min_distance),
        min_distance_A=float(min_distance),
    )


def _temperature(atoms: Atoms) -> float | None:
    value = atoms.info.get("temperature")
    return None if value is None else float(value)
