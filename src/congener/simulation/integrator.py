"""Batched Langevin molecular dynamics (BAOAB): the init/step pair over `MDState`.

Many systems (trajectories) share one flat `Graph`: atoms are concatenated, each system keeps
its own cell, masses and noise stream. Units are ASE's: positions Å, masses amu, energies eV,
time in ASE units (`ase.units.fs`), momenta amu·Å/(ASE time); arguments carry the unit in
their names (`timestep_fs`, `friction_per_ps`, `temperature_K`).

Integrator: BAOAB (Leimkuhler & Matthews 2013): half kick, half drift, exact Ornstein-Uhlenbeck
step p <- c p + sqrt((1 - c²) m kT) ξ with c = exp(-γ dt), half drift, new forces, half
kick. With zero friction it is velocity Verlet (NVE).

Neighbours: the graph is built with cutoff + skin and rebuilt only when an atom of any system
has moved more than skin/2 since the last build. On the CPU the graph is pruned to edges
shorter than the cutoff before each force call. Pruning only saves time: the DimeNet++
envelope (models/basis.py) is exactly zero for d >= cutoff and enters every radial and
spherical basis function, so edges beyond the cutoff contribute exactly zero. On an
accelerator the skin graph is used as built (`PRUNE`): its edges stay the same tensors until
the next build, so the potential lays them out once (`Potential.prepare`) and a step reads one
value back to the host, whether to rebuild.

Noise: each system owns a `torch.Generator` seeded from its own seed, so a batched run
reproduces separate runs with the same per-system seeds (`system_seeds`), up to round-off.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from ase import Atoms, units
from torch import Tensor

from congener.errors import DataError
from congener.graph import Graph, build_graph
from congener.models.potential import Potential, Prediction

DEFAULT_SKIN_A = 0.5


class PotentialLike(Protocol):
    """What MD needs of a potential: a cutoff (Å) and `__call__(graph) -> Prediction`."""

    cutoff: float

    def __call__(self, graph: Graph) -> Prediction: ...


@dataclass
class MDState:
    """State of B systems with N atoms in total (all float tensors float64).

    positions [N,3] Å (unwrapped); momenta [N,3] amu·Å/ASE-time; masses [N] amu;
    species [N]; cell [B,3,3] Å; batch [N] system of each atom; n_atoms [B];
    forces [N,3] eV/Å and energy [B] eV at `positions`; min_distance [B] Å, shortest pair
    distance within the cutoff (inf if none); graph: neighbour graph built with cutoff + skin
    at `reference` [N,3] positions; system_ids [B] index of each system in the original list;
    generators: one noise stream per system; step: steps taken so far.
    """

    positions: Tensor
    momenta: Tensor
    masses: Tensor
    species: Tensor
    cell: Tensor
    batch: Tensor
    n_atoms: Tensor
    forces: Tensor
    energy: Tensor
    min_distance: Tensor
    graph: Graph
    reference: Tensor
    cutoff: float
    skin: float
    system_ids: Tensor
    generators: list[torch.Generator]
    step: int = 0
    _counts: list[int] | None = field(default=None, repr=False)

    @property
    def n_systems(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def counts(self) -> list[int]:
        """Atoms per system on the host (read from `n_atoms` once per state lineage: `replace`
        carries it along, so a step reads nothing)."""
        if self._counts is None or len(self._counts) != self.n_systems:
            self._counts = self.n_atoms.tolist()
        return self._counts


def system_seeds(seed: int, n: int) -> list[int]:
    """Independent per-system seeds derived from one run seed (numpy `SeedSequence.spawn`)."""
    return [int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
            for s in np.random.SeedSequence(seed).spawn(n)]


def _model_device(potential: PotentialLike) -> torch.device:
    tensors = [*potential.parameters(), *potential.buffers()] if isinstance(
        potential, torch.nn.Module) else []
    return tensors[0].device if tensors else torch.device("cpu")


def _model_dtype(potential: PotentialLike) -> torch.dtype:
    params = list(potential.parameters()) if isinstance(potential, torch.nn.Module) else []
    return params[0].dtype if params else torch.float64


def per_system(values: Tensor, batch: Tensor, n_systems: int) -> Tensor:
    """Sum of per-atom `values` [N] or [N,...] over each system -> [B] or [B,...]."""
    out = torch.zeros((n_systems, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, batch, values)


def kinetic_energy(state: MDState) -> Tensor:
    """Kinetic energy per system [B] in eV."""
    ke = (state.momenta**2).sum(-1) / (2 * state.masses)
    return per_system(ke, state.batch, state.n_systems)


def kinetic_temperature(state: MDState) -> Tensor:
    """Instantaneous kinetic temperature per system [B] in K (3N degrees of freedom)."""
    return 2 * kinetic_energy(state) / (3 * state.n_atoms.to(torch.float64) * units.kB)


def prune_graph(graph: Graph, cutoff: float) -> tuple[Graph, Tensor]:
    """Keep edges shorter than `cutoff` (triplets follow: they are pairs of kept edges).

    Returns the pruned graph and the distances [E'] (Å) of its edges. An edge is kept with
    its reverse (both or neither: their lengths could differ in the last bit).
    """
    dist = graph.edge_vectors().norm(dim=-1)
    keep = dist < cutoff
    keep &= keep.index_select(0, graph.edge_reverse)
    new_index = torch.cumsum(keep, 0) - 1
    pruned = replace(graph, edge_index=graph.edge_index[:, keep],
                     cell_shifts=graph.cell_shifts[keep],
                     edge_reverse=new_index.index_select(0, graph.edge_reverse[keep]),
                     cutoff=float(cutoff))
    return pruned, dist[keep]


# Where MD rebuilds its neighbour graph: "auto" builds it on the positions' device when that is
# not the CPU (congener.graph_device: no copy of the positions to the host), and through
# ase.Atoms and vesin's numpy interface on the CPU; "device" always takes the device path.
GRAPH_PATH = "auto"
# Whether MD prunes its skin graph to the cutoff before each force call: "auto" on the CPU
# (fewer edges and triplets to compute), not on accelerators (no data-dependent sizes per
# step); "always" or "never" force either (tests compare the two).
PRUNE = "auto"


def _build(state_like: MDState, positions: Tensor, dtype: torch.dtype) -> Graph:
    """Graph of all systems at `positions` with cutoff + skin (non-finite rows kept at the
    last reference positions, so that a diverged system cannot break the neighbour list)."""
    pos = torch.where(torch.isfinite(positions), positions, state_like.reference)
    if GRAPH_PATH == "device" or pos.device.type != "cpu":
        from congener.graph_device import device_graph

        return device_graph(pos.detach().to(dtype), state_like.species, state_like.cell,
                            state_like.n_atoms, state_like.cutoff + state_like.skin)
    pos_np, cells = pos.detach().cpu().numpy(), state_like.cell.cpu().numpy()
    ptr = np.concatenate([[0], np.cumsum(state_like.n_atoms.cpu().numpy())])
    species = state_like.species.cpu().numpy()
    atoms = [Atoms(numbers=species[a:b], positions=pos_np[a:b], cell=cells[k], pbc=True)
             for k, (a, b) in enumerate(itertools.pairwise(ptr))]
    graph = build_graph(atoms, state_like.cutoff + state_like.skin)
    return graph.to(device=positions.device, dtype=dtype)


def _pruned(device: torch.device, potential: PotentialLike) -> bool:
    """Whether MD prunes the skin graph to the cutoff before each force call (`PRUNE`); always
    for a potential that is not congener's (only those are known to give exactly zero past the
    cutoff). Where it does not, the potential is a `Potential`, which `prepare`s each graph."""
    if not isinstance(potential, Potential):
        return True
    return device.type == "cpu" if PRUNE == "auto" else PRUNE == "always"


def _evaluate(state: MDState, potential: PotentialLike) -> MDState:
    """Forces, energies and shortest distances at the current positions (rebuilding the
    neighbour graph when an atom moved more than skin/2)."""
    dtype = _model_dtype(potential)
    moved = (state.positions - state.reference).norm(dim=-1)
    graph, reference = state.graph, state.reference
    policy = _pruned(state.positions.device, potential)
    prune = state.skin > 0 and policy
    if bool((moved > 0.5 * state.skin).any()):  # the step's one host read
        graph = _build(state, state.positions, dtype)
        reference = torch.where(torch.isfinite(state.positions), state.positions,
                                state.reference)
        if not policy:
            potential.prepare(graph)
    graph = replace(graph, positions=state.positions.to(dtype))
    if prune:
        pruned, dist = prune_graph(graph, state.cutoff)
    else:  # edges beyond the cutoff contribute zero; they do not count as close pairs
        pruned, dist = graph, graph.edge_vectors().norm(dim=-1)
        dist = torch.where(dist < state.cutoff, dist, torch.full_like(dist, float("inf")))
    out = potential(pruned)
    edge_system = pruned.batch.index_select(0, pruned.edge_index[0])
    min_distance = torch.full((state.n_systems,), float("inf"), dtype=torch.float64,
                              device=state.positions.device)
    min_distance = min_distance.scatter_reduce(0, edge_system, dist.detach().to(torch.float64),
                                               reduce="amin")
    return replace(state, graph=graph, reference=reference,
                   forces=out.forces.detach().to(torch.float64),
                   energy=out.energy.detach().to(torch.float64), min_distance=min_distance)


def _noise(state: MDState) -> Tensor:
    """Standard normal noise [N,3], each system's block drawn from its own generator."""
    blocks = [torch.randn((n, 3), generator=g, dtype=torch.float64,
                          device=state.positions.device)
              for n, g in zip(state.counts, state.generators, strict=True)]
    return torch.cat(blocks)


def md_init(atoms_list: Sequence[Atoms], potential: PotentialLike, *, temperature_K: float,
            seed: int | Sequence[int], skin_A: float = DEFAULT_SKIN_A) -> MDState:
    """Initial state: Maxwell-Boltzmann momenta at `temperature_K` (zero net momentum per
    system), forces and energies of `potential`.

    `seed` is one run seed (per-system seeds from `system_seeds`) or one seed per system.
    Tensors live on the potential's device.
    """
    if not atoms_list:
        raise DataError("MD needs at least one structure")
    for k, atoms in enumerate(atoms_list):
        if not np.all(atoms.pbc):
            raise DataError(f"MD needs 3D periodic structures; structure {k} is not")
    seeds = system_seeds(seed, len(atoms_list)) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(atoms_list):
        raise DataError(f"got {len(seeds)} seeds for {len(atoms_list)} structures")
    device, f64 = _model_device(potential), torch.float64
    graph = build_graph(list(atoms_list), potential.cutoff + skin_A).to(device=device)
    masses = torch.tensor(np.concatenate([a.get_masses() for a in atoms_list]), dtype=f64,
                          device=device)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    state = MDState(
        positions=graph.positions.clone(), momenta=torch.zeros_like(graph.positions),
        masses=masses, species=graph.species, cell=graph.cell, batch=graph.batch,
        n_atoms=graph.n_atoms, forces=torch.zeros_like(graph.positions),
        energy=torch.zeros(len(atoms_list), dtype=f64, device=device),
        min_distance=torch.zeros(len(atoms_list), dtype=f64, device=device),
        graph=graph.to(dtype=_model_dtype(potential)), reference=graph.positions.clone(),
        cutoff=float(potential.cutoff), skin=float(skin_A),
        system_ids=torch.arange(len(atoms_list), device=device), generators=generators)
    if not _pruned(device, potential):
        potential.prepare(state.graph)
    kT = units.kB * temperature_K
    momenta = _noise(state) * torch.sqrt(masses * kT)[:, None]
    total = per_system(momenta, state.batch, state.n_systems)
    mass = per_system(masses, state.batch, state.n_systems)
    momenta = momenta - masses[:, None] * (total / mass[:, None]).index_select(0, state.batch)
    return _evaluate(replace(state, momenta=momenta), potential)


def md_step(state: MDState, potential: PotentialLike, *, timestep_fs: float,
            friction_per_ps: float, temperature_K: float) -> MDState:
    """One BAOAB Langevin step of every system (velocity Verlet when friction is zero).

    Advances the per-system generators in `state` (the rest of `state` is not modified).
    """
    dt = timestep_fs * units.fs
    inv_m = (1.0 / state.masses)[:, None]
    p = state.momenta + 0.5 * dt * state.forces
    x = state.positions + 0.5 * dt * p * inv_m
    if friction_per_ps > 0:
        gamma = friction_per_ps / (1000.0 * units.fs)
        c = float(np.exp(-gamma * dt))
        sigma = torch.sqrt((1.0 - c * c) * state.masses * units.kB * temperature_K)[:, None]
        p = c * p + sigma * _noise(state)
    x = x + 0.5 * dt * p * inv_m
    new = _evaluate(replace(state, positions=x, momenta=p), potential)
    return replace(new, momenta=new.momenta + 0.5 * dt * new.forces, step=state.step + 1)


def select_systems(state: MDState, keep: Tensor, potential: PotentialLike) -> MDState:
    """The state restricted to the systems where `keep` [B] (bool) is True.

    The neighbour graph is rebuilt; forces and energies of the kept systems are retained.
    """
    keep = keep.to(device=state.positions.device)
    atom_keep = keep.index_select(0, state.batch)
    n_atoms = state.n_atoms[keep]
    batch = torch.repeat_interleave(torch.arange(len(n_atoms), device=keep.device), n_atoms)
    idx = torch.nonzero(keep).flatten().tolist()
    sub = replace(
        state, positions=state.positions[atom_keep], momenta=state.momenta[atom_keep],
        masses=state.masses[atom_keep], species=state.species[atom_keep],
        cell=state.cell[keep], batch=batch, n_atoms=n_atoms, forces=state.forces[atom_keep],
        energy=state.energy[keep], min_distance=state.min_distance[keep],
        reference=state.positions[atom_keep], system_ids=state.system_ids[keep],
        generators=[state.generators[k] for k in idx], _counts=None)
    if sub.n_systems == 0:
        return sub
    graph = _build(sub, sub.positions, _model_dtype(potential))
    if not _pruned(graph.positions.device, potential):
        potential.prepare(graph)
    return replace(sub, graph=graph)
