"""Samplers: the configurations a distilled student learns from (Radova et al. 2025 label
them with a fine-tuned foundation model; `congener.training.distill` does the labelling).

Each strategy is one function of the seed structures and a seeded generator:
- `md_frames`: snapshots of batched Langevin MD with the teacher at one temperature of a
  ladder (`temperature_ladder`, 300 K to twice the melting point by default), taken every k
  steps after an equilibration; unstable trajectories are dropped and counted;
- `rattled`: Gaussian displacements of every atom over a range of sigmas;
- `strained`: homogeneous strains with an exact volume change and a random symmetric shear;
- `deduplicate`: drops snapshots whose pair-distance descriptor is within a relative
  distance of one already kept, so that the labelling budget goes to distinct configurations.

Every sample carries its origin in `atoms.info` (`sample`, `seed_structure`, and the
temperature, sigma or strain that made it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from vesin import NeighborList

from congener.errors import ConfigError
from congener.simulation.integrator import MDState, PotentialLike
from congener.simulation.md import run_md

# Melting points at ambient pressure (K; CRC Handbook), for the default temperature ladder.
# A short table rather than a dependency: ASE has no melting points, and pymatgen (which
# has them) comes only with the foundation extra. Other elements give `max_temperature_K`.
MELTING_POINT_K = {
    "Al": 933.5, "Ga": 302.9, "In": 429.7, "C": 4300.0, "Si": 1687.0, "Ge": 1211.4,
    "Sn": 505.1, "Pb": 600.6, "Sb": 903.8, "Bi": 544.6, "Cu": 1357.8, "Ag": 1234.9,
    "Au": 1337.3, "Ni": 1728.0, "Pd": 1828.1, "Pt": 2041.4, "Fe": 1811.0, "Ti": 1941.0,
}


def melting_point_K(elements: Sequence[str]) -> float:
    """Highest melting point of `elements` (K); `ConfigError` for an element not tabulated."""
    unknown = [e for e in elements if e not in MELTING_POINT_K]
    if unknown:
        raise ConfigError(f"no melting point tabulated for {', '.join(unknown)}: give "
                          "sampling.max_temperature_K")
    return max(MELTING_POINT_K[e] for e in elements)


def temperature_ladder(elements: Sequence[str], *, n: int = 6, min_temperature_K: float = 300.0,
                       max_temperature_K: float | None = None) -> list[float]:
    """`n` evenly spaced temperatures (K) from `min_temperature_K` to `max_temperature_K`
    (default: twice the melting point of the elements)."""
    top = max_temperature_K if max_temperature_K is not None else 2 * melting_point_K(elements)
    if top < min_temperature_K:
        raise ConfigError(f"sampling: max_temperature_K ({top:g}) is below min_temperature_K "
                          f"({min_temperature_K:g})")
    return [float(t) for t in np.linspace(min_temperature_K, top, n)] if n > 1 else [float(top)]


@dataclass
class MDSample:
    """Snapshots of one temperature: `frames` from stable trajectories, and how many of the
    `n_trajectories` failed (`failures`: reason per failed trajectory)."""

    temperature_K: float
    frames: list[Atoms]
    n_trajectories: int
    failures: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)


def md_frames(potential: PotentialLike, seeds: Sequence[Atoms], temperature_K: float, *,
              steps: int, equilibration_steps: int, sample_every: int, timestep_fs: float = 2.0,
              friction_per_ps: float = 1.0, seed: int = 0, trajectories_per_seed: int = 1,
              checkpoint: str | Path | None = None, threads: int | None = None,
              callback: Callable[[int, MDState], None] | None = None) -> MDSample:
    """Langevin MD of every seed structure (`trajectories_per_seed` copies each, one batch)
    at `temperature_K`; frames every `sample_every` steps after `equilibration_steps`.

    A trajectory that fails the runner's stability check (NaN, close contact, overheating)
    is dropped with all its frames: a snapshot taken just before a blow-up is already
    unphysical. `checkpoint` makes an interrupted run resume (see `simulation.md`)."""
    if equilibration_steps >= steps:
        raise ConfigError(f"sampling: equilibration_steps ({equilibration_steps}) must be "
                          f"below md_steps ({steps}): no snapshot would be taken")
    starts = [a for a in seeds for _ in range(trajectories_per_seed)]
    result = run_md(potential, starts, temperature_K=temperature_K, timestep_fs=timestep_fs,
                    steps=steps, friction_per_ps=friction_per_ps, seed=seed,
                    sample_every=sample_every, threads=threads, callback=callback,
                    checkpoint=checkpoint, checkpoint_every=max(sample_every, 100))
    frames, failures = [], []
    for traj in result.trajectories:
        origin = traj.index // trajectories_per_seed
        if not traj.stable:
            failures.append(f"{traj.failure} at step {traj.failed_step}")
            continue
        template = starts[traj.index]
        for step, pos, kinetic in zip(traj.steps, traj.positions, traj.temperature_K,
                                      strict=True):
            if step < equilibration_steps or step == 0:
                continue
            atoms = Atoms(numbers=traj.numbers, positions=pos, cell=traj.cell,
                          pbc=template.pbc)
            if atoms.pbc.any():
                atoms.wrap()
            atoms.info.update(sample="md", seed_structure=origin, temperature=temperature_K,
                              step=int(step), kinetic_temperature=float(kinetic))
            frames.append(atoms)
    return MDSample(temperature_K, frames, len(starts), failures)


def rattled(seeds: Sequence[Atoms], sigmas_A: Sequence[float], copies: int,
            rng: np.random.Generator) -> list[Atoms]:
    """`copies` copies of each seed per sigma, every Cartesian coordinate displaced by an
    independent Gaussian of standard deviation sigma (Å)."""
    out = []
    for k, atoms in enumerate(seeds):
        for sigma in sigmas_A:
            for _ in range(copies):
                new = _bare(atoms)
                new.positions += rng.normal(0.0, sigma, size=new.positions.shape)
                new.info.update(sample="rattle", seed_structure=k, sigma_A=float(sigma))
                out.append(new)
    return out


def strain_matrix(volume_strain: float, shear: np.ndarray) -> np.ndarray:
    """Deformation gradient [3,3] with volume ratio exactly 1 + `volume_strain` and the
    symmetric off-diagonal strains `shear` (xy, xz, yz) at fixed volume."""
    e = np.eye(3)
    e[0, 1] = e[1, 0] = shear[0]
    e[0, 2] = e[2, 0] = shear[1]
    e[1, 2] = e[2, 1] = shear[2]
    e /= np.cbrt(np.linalg.det(e))  # the shear alone keeps the volume
    return np.cbrt(1.0 + volume_strain) * e


def strained(seeds: Sequence[Atoms], *, max_volume_strain: float, max_shear: float,
             copies: int, rng: np.random.Generator) -> list[Atoms]:
    """`copies` strained copies of each 3D-periodic seed: volume change uniform in
    ±`max_volume_strain`, each shear component uniform in ±`max_shear`, atoms moved with the
    cell. Seeds that are not periodic in 3D (slabs, molecules) are skipped."""
    out = []
    for k, atoms in enumerate(seeds):
        if not atoms.pbc.all() or atoms.cell.rank < 3:
            continue
        for _ in range(copies):
            volume = float(rng.uniform(-max_volume_strain, max_volume_strain))
            shear = rng.uniform(-max_shear, max_shear, size=3)
            new = _bare(atoms)
            new.set_cell(new.cell.array @ strain_matrix(volume, shear).T, scale_atoms=True)
            new.info.update(sample="strain", seed_structure=k, volume_strain=volume,
                            max_shear=float(np.abs(shear).max()))
            out.append(new)
    return out


def descriptor(atoms: Atoms, *, r_max_A: float = 5.0, points: int = 64,
               width_A: float = 0.1) -> np.ndarray:
    """Neighbour density per atom (Gaussian-smeared pair distances up to `r_max_A`, per Å)
    on `points` radii: a cheap, permutation-, rotation- and translation-invariant fingerprint
    whose integral is the mean number of neighbours within `r_max_A`."""
    periodic = np.asarray(atoms.pbc, dtype=bool)
    nl = NeighborList(cutoff=float(r_max_A) + 3 * width_A, full_list=True)
    box = atoms.cell.array if periodic.any() else np.zeros((3, 3))
    (d,) = nl.compute(points=np.ascontiguousarray(atoms.positions, dtype=np.float64),
                      box=np.asarray(box, dtype=np.float64), periodic=periodic,
                      quantities="d")
    r = np.linspace(0.0, r_max_A, points)
    density = np.exp(-0.5 * ((r[None, :] - d[:, None]) / width_A) ** 2).sum(0)
    return density / (len(atoms) * width_A * np.sqrt(2 * np.pi))


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L1 distance of two descriptors: sum |a - b| / (sum (a + b) / 2), in [0, 2]."""
    scale = 0.5 * float(np.sum(a) + np.sum(b))
    return float(np.abs(a - b).sum() / scale) if scale > 0 else 0.0


def deduplicate(structures: Sequence[Atoms], threshold: float, **descriptor_args
                ) -> list[int]:
    """Indices of the structures kept, in order: a structure is dropped when its descriptor
    is within `threshold` (relative L1, see `descriptor_distance`) of a kept structure of the
    same composition. Exact copies have distance 0 and go for any threshold >= 0."""
    kept: list[int] = []
    by_formula: dict[str, list[np.ndarray]] = {}
    for k, atoms in enumerate(structures):
        desc = descriptor(atoms, **descriptor_args)
        group = by_formula.setdefault(atoms.get_chemical_formula(), [])
        if any(descriptor_distance(desc, other) <= threshold for other in group):
            continue
        group.append(desc)
        kept.append(k)
    return kept


def _bare(atoms: Atoms) -> Atoms:
    """A copy without calculator, labels or per-frame metadata."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(),
                 cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy())
