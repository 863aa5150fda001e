"""MD checkpoints: positions, momenta, noise-generator states and the sampled frames of a
batched run, so that a long protocol (the paper's 100 ps liquid runs) can run over several
sittings and a crash loses at most one checkpoint interval.

A checkpoint belongs to one set of settings (structures, seeds, temperature, time step,
friction, sampling, stability criterion, skin); `steps` may grow between sittings. The file is
written atomically (`congener.files.atomic_write`) and read with `weights_only=True`.
Forces after a restore are recomputed from the restored positions with a fresh neighbour
graph: the continued trajectory equals the uninterrupted one to float rounding (the graph's
skin edges, which carry no force, are summed in another order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from congener.errors import CheckpointError, first_line
from congener.files import atomic_write
from congener.simulation.integrator import MDState, PotentialLike, md_init

FORMAT = "congener-md/1"


def fingerprint(atoms_list: Sequence[Atoms]) -> str:
    """Short hash of the starting structures (numbers, positions, cells)."""
    digest = hashlib.sha256()
    for atoms in atoms_list:
        for array in (atoms.numbers, atoms.positions, atoms.cell.array):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Restored:
    """What a checkpoint gives back: the state, the trajectories so far and the counters."""

    state: MDState
    trajectories: list[dict[str, Any]]
    system_steps: int
    wall_s: float


def save(path: Path, state: MDState, trajectories: Sequence[Any], settings: dict[str, Any],
         system_steps: int, wall_s: float) -> None:
    """Write the run's state after `state.step` steps (atomically)."""
    payload = {
        "format": FORMAT, "settings": settings, "step": int(state.step),
        "system_ids": state.system_ids.cpu(), "positions": state.positions.detach().cpu(),
        "momenta": state.momenta.detach().cpu(),
        "generators": [g.get_state() for g in state.generators],
        "trajectories": [_trajectory_dict(t) for t in trajectories],
        "system_steps": int(system_steps), "wall_s": float(wall_s),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def _trajectory_dict(t: Any) -> dict[str, Any]:
    return {"steps": list(t.steps), "positions": [torch.from_numpy(np.asarray(p))
                                                  for p in t.positions],
            "temperature_K": list(t.temperature_K),
            "potential_energy_eV": list(t.potential_energy_eV),
            "total_energy_eV": list(t.total_energy_eV),
            "failure": None if t.failure is None else str(t.failure),
            "failed_step": t.failed_step, "detail": t.detail}


def restore(path: Path, settings: dict[str, Any], atoms_list: Sequence[Atoms],
            seeds: Sequence[int], potential: PotentialLike, temperature_K: float,
            skin_A: float) -> Restored | None:
    """The run stored in `path` (None if there is none yet); `CheckpointError` if it is
    unreadable or was written with other settings."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read the MD checkpoint {path}: {first_line(exc)}; "
                              "delete it to start the run over") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a congener MD checkpoint")
    if payload["settings"] != settings:
        changed = sorted(k for k in settings if payload["settings"].get(k) != settings[k])
        raise CheckpointError(f"{path} was written by an MD run with other settings "
                              f"({', '.join(changed)}); use another checkpoint file")
    ids = payload["system_ids"].tolist()
    if not ids:  # every trajectory had failed
        state = md_init(atoms_list[:1], potential, temperature_K=temperature_K,
                        seed=list(seeds[:1]), skin_A=skin_A)
        from congener.simulation.integrator import select_systems

        empty = select_systems(state, torch.zeros(1, dtype=torch.bool), potential)
        return Restored(replace(empty, step=payload["step"]), payload["trajectories"],
                        payload["system_steps"], payload["wall_s"])
    alive = [atoms_list[i].copy() for i in ids]
    positions = payload["positions"].double().numpy()
    start = 0
    for atoms in alive:
        atoms.positions = positions[start:start + len(atoms)]
        start += len(atoms)
    state = md_init(alive, potential, temperature_K=temperature_K,
                    seed=[seeds[i] for i in ids], skin_A=skin_A)
    device = state.positions.device
    for generator, saved in zip(state.generators, payload["generators"], strict=True):
        generator.set_state(saved)
    state = replace(state, momenta=payload["momenta"].to(device=device, dtype=torch.float64),
                    system_ids=torch.tensor(ids, device=device), step=int(payload["step"]))
    return Restored(state, payload["trajectories"], payload["system_steps"], payload["wall_s"])
