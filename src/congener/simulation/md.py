"""Batched NVT molecular dynamics runner with per-trajectory stability checks.

`run_md` owns the loop over `md_step` (integrator.py), samples frames and checks every
trajectory after every step. A trajectory fails, and is dropped from the batch while the
others go on, when it produces NaN/Inf and, unless the stability check is turned off
explicitly (`stability_check=False`), when two atoms come closer than `min_distance_A`
(Röcken & Zavadlav: no RDF value below 0.2 nm) or when its kinetic temperature exceeds
`max_temperature_factor` x the target. The step and the reason are recorded, and the result
says which criterion applied (`MDResult.criterion`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from congener.bounds import check_float, check_int
from congener.runtime import resolve_device, resolve_dtype, set_threads, tune_allocator
from congener.simulation.integrator import (
    DEFAULT_SKIN_A,
    MDState,
    PotentialLike,
    kinetic_energy,
    kinetic_temperature,
    md_init,
    md_step,
    per_system,
    prune_graph,
    select_systems,
    system_seeds,
)

__all__ = [
    "DEFAULT_SKIN_A", "Failure", "MDResult", "MDState", "Trajectory", "check_settings",
    "criterion", "describe_criterion", "kinetic_energy", "kinetic_temperature", "md_init",
    "md_step", "prune_graph", "run_md", "select_systems", "system_seeds",
]


# Physical ranges of the settings (refused outside, with the range in the message)
MAX_TEMPERATURE_K = 20_000.0  # well above any boiling point; the SW data stop at 3600 K
MAX_TIMESTEP_FS = 10.0  # a 10 fs step already misses vibrations of heavy atoms
MAX_FRICTION_PER_PS = 1000.0  # 1/fs: damping faster than any time step
MAX_MIN_DISTANCE_A = 5.0  # a close-contact threshold above nearest-neighbour distances
MAX_TEMPERATURE_FACTOR = 100.0
_SETTING_NAMES = {k: f"md: {k}" for k in (
    "temperature_K", "timestep_fs", "steps", "friction_per_ps", "sample_every",
    "min_distance_A", "max_temperature_factor")}


class Failure(StrEnum):
    """Why a trajectory was stopped."""

    NON_FINITE = "non-finite"
    CLOSE_CONTACT = "close-contact"
    OVERHEATED = "overheated"


@dataclass
class Trajectory:
    """Sampled frames and fate of one trajectory.

    numbers [n] atomic numbers; cell [3,3] Å; steps [F] step of each sampled frame;
    positions: F arrays [n,3] Å (unwrapped); temperature_K, potential_energy_eV and
    total_energy_eV [F] per frame. `failure`/`failed_step`/`detail` are set if it failed.
    """

    index: int
    seed: int
    numbers: np.ndarray
    cell: np.ndarray
    steps: list[int] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    temperature_K: list[float] = field(default_factory=list)
    potential_energy_eV: list[float] = field(default_factory=list)
    total_energy_eV: list[float] = field(default_factory=list)
    failure: Failure | None = None
    failed_step: int | None = None
    detail: str = ""

    @property
    def stable(self) -> bool:
        return self.failure is None

    def frames(self, start_step: int = 0) -> list[Atoms]:
        """Sampled frames at steps >= `start_step` as periodic `Atoms` (positions wrapped)."""
        out = []
        for step, pos in zip(self.steps, self.positions, strict=True):
            if step >= start_step:
                atoms = Atoms(numbers=self.numbers, positions=pos, cell=self.cell, pbc=True)
                atoms.wrap()
                out.append(atoms)
        return out


@dataclass
class MDResult:
    """Outcome of `run_md`: one `Trajectory` per input structure, run settings and timing.

    system_steps counts steps summed over the systems alive at each step; wall_s is the
    loop's wall time in seconds (initialisation included). `criterion` says what stopped a
    trajectory (see `criterion`): stable means "passed these checks".
    """

    trajectories: list[Trajectory]
    steps: int
    timestep_fs: float
    temperature_K: float
    friction_per_ps: float
    wall_s: float
    system_steps: int
    criterion: dict[str, Any] = field(default_factory=dict)

    @property
    def n_stable(self) -> int:
        return sum(t.stable for t in self.trajectories)

    @property
    def system_steps_per_s(self) -> float:
        return self.system_steps / self.wall_s if self.wall_s > 0 else float("nan")

    def stable_frames(self, start_step: int = 0) -> list[list[Atoms]]:
        """Frames (from `start_step` on) of each stable trajectory."""
        return [t.frames(start_step) for t in self.trajectories if t.stable]


def check_settings(*, temperature_K: float, timestep_fs: float, steps: int,
                   friction_per_ps: float = 1.0, sample_every: int = 10,
                   min_distance_A: float = 2.0, max_temperature_factor: float = 5.0,
                   names: dict[str, str] | None = None) -> None:
    """`ConfigError` (one line, with the allowed range) unless every MD setting is finite and
    within its physical range. `names` renames settings in the message (CLI options)."""
    names = {**_SETTING_NAMES, **(names or {})}
    check_float(names["temperature_K"], temperature_K, 0.0, MAX_TEMPERATURE_K, low_open=True)
    check_float(names["timestep_fs"], timestep_fs, 0.0, MAX_TIMESTEP_FS, low_open=True)
    check_int(names["steps"], steps, 1)
    check_float(names["friction_per_ps"], friction_per_ps, 0.0, MAX_FRICTION_PER_PS)
    check_int(names["sample_every"], sample_every, 1)
    check_float(names["min_distance_A"], min_distance_A, 0.0, MAX_MIN_DISTANCE_A,
                low_open=True)
    check_float(names["max_temperature_factor"], max_temperature_factor, 1.0,
                MAX_TEMPERATURE_FACTOR, low_open=True)


def criterion(*, stability_check: bool = True, min_distance_A: float = 2.0,
              max_temperature_factor: float = 5.0, temperature_K: float | None = None
              ) -> dict[str, Any]:
    """What stops a trajectory, as recorded in stability.json: NaN/Inf always; with the
    stability check on, also a pair closer than min_distance_A and a kinetic temperature
    above max_temperature_factor x the target."""
    out: dict[str, Any] = {"stability_check": "on" if stability_check else "off",
                           "non_finite": True}
    if stability_check:
        out |= {"min_distance_A": min_distance_A, "max_temperature_factor": max_temperature_factor}
        if temperature_K is not None:
            out["max_temperature_K"] = max_temperature_factor * temperature_K
    else:
        out |= {"min_distance_A": None, "max_temperature_factor": None}
    return out


def describe_criterion(crit: dict[str, Any]) -> str:
    """One line for the terminal: which criterion decided 'stable'."""
    if crit.get("stability_check") == "off":
        return "stability check off: only NaN/Inf stops a trajectory"
    hot = (f"{crit['max_temperature_factor']:g} x target"
           + (f" = {crit['max_temperature_K']:g} K" if "max_temperature_K" in crit else ""))
    return (f"stability criterion: no pair closer than {crit['min_distance_A']:g} Å, kinetic "
            f"temperature <= {hot}, no NaN/Inf")


def _failures(state: MDState, *, temperature_K: float, min_distance_A: float,
              max_temperature_factor: float, stability_check: bool = True
              ) -> list[tuple[Failure, str] | None]:
    """Per-system failure (reason, detail) or None; only NaN/Inf without `stability_check`."""
    def bad(x):
        return per_system((~torch.isfinite(x)).flatten(1).any(1).to(torch.long),
                          state.batch, state.n_systems) > 0

    non_finite = (bad(state.positions) | bad(state.momenta) | bad(state.forces)
                  | ~torch.isfinite(state.energy))
    flags, temps, dmin = torch.stack([non_finite.to(torch.float64), kinetic_temperature(state),
                                      state.min_distance]).tolist()  # one host read
    non_finite = [f > 0 for f in flags]
    out: list[tuple[Failure, str] | None] = []
    for k in range(state.n_systems):
        if non_finite[k]:
            out.append((Failure.NON_FINITE, "NaN or Inf in positions, momenta, forces or energy"))
        elif not stability_check:
            out.append(None)
        elif dmin[k] < min_distance_A:
            out.append((Failure.CLOSE_CONTACT,
                        f"atom pair at {dmin[k]:.3f} Å < {min_distance_A:g} Å"))
        elif temperature_K > 0 and temps[k] > max_temperature_factor * temperature_K:
            out.append((Failure.OVERHEATED, f"kinetic temperature {temps[k]:.0f} K > "
                        f"{max_temperature_factor:g} x {temperature_K:g} K"))
        else:
            out.append(None)
    return out


def _record(state: MDState, trajectories: list[Trajectory]) -> None:
    sizes = state.n_atoms.tolist()
    positions = torch.split(state.positions.detach().cpu(), sizes)
    temps = kinetic_temperature(state).tolist()
    kinetic = kinetic_energy(state).tolist()
    energies = state.energy.tolist()
    for k, index in enumerate(state.system_ids.tolist()):
        t = trajectories[index]
        t.steps.append(state.step)
        t.positions.append(positions[k].numpy().copy())
        t.temperature_K.append(temps[k])
        t.potential_energy_eV.append(energies[k])
        t.total_energy_eV.append(energies[k] + kinetic[k])


def _prepare(potential: PotentialLike, device: str | None, dtype: str | torch.dtype | None
             ) -> None:
    if not isinstance(potential, torch.nn.Module):
        return
    target_dtype = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
    target_device = resolve_device(device) if device is not None else None
    if target_dtype is not None or target_device is not None:
        potential.to(device=target_device, dtype=target_dtype)
    potential.eval()


def run_md(potential: PotentialLike, atoms_list: Sequence[Atoms], *, temperature_K: float,
           timestep_fs: float, steps: int, friction_per_ps: float = 1.0,
           seed: int | Sequence[int] = 0, sample_every: int = 10, min_distance_A: float = 2.0,
           max_temperature_factor: float = 5.0, stability_check: bool = True,
           skin_A: float = DEFAULT_SKIN_A,
           device: str | None = None, dtype: str | torch.dtype | None = None,
           threads: int | None = None,
           callback: Callable[[int, MDState], None] | None = None,
           checkpoint: str | Path | None = None, checkpoint_every: int = 1000) -> MDResult:
    """Run Langevin NVT (NVE for zero friction) of all structures as one batch.

    With `checkpoint` (a file), the state is saved every `checkpoint_every` steps and at the
    end, and a rerun with the same settings continues from it (`steps` may grow between
    sittings; see analysis.md_checkpoint).

    Frames are sampled at step 0 and every `sample_every` steps. A potential that is an
    `nn.Module` is moved to `device`/`dtype` (in place) when given. `seed` is a run seed or
    one seed per structure (see `system_seeds`). `callback(step, state)` is called after
    every step (progress bars). Never raises for a diverging trajectory: it is recorded as
    failed and dropped, and the run stops early once no trajectory is left. Uses `threads`
    torch threads (default: all cores) and restores the previous count on return.

    The stability check (on unless `stability_check=False`) stops a trajectory at a pair
    closer than `min_distance_A` or a kinetic temperature above `max_temperature_factor` x
    `temperature_K`; NaN/Inf stop it always. `MDResult.criterion` records which applied.
    Settings outside their physical range raise `ConfigError` (see `check_settings`).
    """
    # the close-contact and overheating limits are checked only where they apply
    limits = ({"min_distance_A": min_distance_A, "max_temperature_factor": max_temperature_factor}
              if stability_check else {})
    check_settings(temperature_K=temperature_K, timestep_fs=timestep_fs, steps=steps,
                   friction_per_ps=friction_per_ps, sample_every=sample_every, **limits)
    tune_allocator()
    previous_threads = torch.get_num_threads()
    set_threads(threads)
    try:
        return _run(potential, atoms_list, temperature_K=temperature_K,
                    timestep_fs=timestep_fs, steps=steps, friction_per_ps=friction_per_ps,
                    seed=seed, sample_every=sample_every, min_distance_A=min_distance_A,
                    max_temperature_factor=max_temperature_factor,
                    stability_check=stability_check, skin_A=skin_A,
                    device=device, dtype=dtype, callback=callback,
                    checkpoint=Path(checkpoint) if checkpoint else None,
                    checkpoint_every=checkpoint_every)
    finally:
        torch.set_num_threads(previous_threads)


def _run(potential: PotentialLike, atoms_list: Sequence[Atoms], *, temperature_K: float,
         timestep_fs: float, steps: int, friction_per_ps: float, seed: int | Sequence[int],
         sample_every: int, min_distance_A: float, max_temperature_factor: float,
         stability_check: bool, skin_A: float, device: str | None,
         dtype: str | torch.dtype | None,
         callback: Callable[[int, MDState], None] | None, checkpoint: Path | None = None,
         checkpoint_every: int = 1000) -> MDResult:
    from congener.simulation import md_checkpoint

    _prepare(potential, device, dtype)
    seeds = system_seeds(seed, len(atoms_list)) if isinstance(seed, int) else list(seed)
    trajectories = [Trajectory(index=k, seed=int(s), numbers=a.numbers.copy(),
                               cell=a.cell.array.copy()) for k, (a, s) in
                    enumerate(zip(atoms_list, seeds, strict=True))]
    limits = {"temperature_K": temperature_K, "min_distance_A": min_distance_A,
              "max_temperature_factor": max_temperature_factor,
              "stability_check": stability_check}
    settings = {**limits, "structures": md_checkpoint.fingerprint(atoms_list),
                "seeds": [int(x) for x in seeds], "timestep_fs": timestep_fs,
                "friction_per_ps": friction_per_ps, "sample_every": sample_every,
                "skin_A": skin_A}
    start = time.perf_counter()
    system_steps, done_s = 0, 0.0
    with torch.inference_mode(False):
        restored = md_checkpoint.restore(checkpoint, settings, atoms_list, seeds, potential,
                                         temperature_K, skin_A) if checkpoint else None
        if restored is None:
            state = md_init(atoms_list, potential, temperature_K=temperature_K, seed=seeds,
                            skin_A=skin_A)
            state = _drop_failed(state, potential, trajectories, limits, record=True)
        else:
            state, system_steps, done_s = (restored.state, restored.system_steps,
                                           restored.wall_s)
            for t, saved in zip(trajectories, restored.trajectories, strict=True):
                _load_trajectory(t, saved)
        for step in range(state.step + 1, steps + 1):
            if state.n_systems == 0:
                break
            system_steps += state.n_systems
            state = md_step(state, potential, timestep_fs=timestep_fs,
                            friction_per_ps=friction_per_ps, temperature_K=temperature_K)
            state = _drop_failed(state, potential, trajectories, limits,
                                 record=step % sample_every == 0)
            if checkpoint and (step % checkpoint_every == 0 or step == steps):
                md_checkpoint.save(checkpoint, state, trajectories, settings, system_steps,
                                   done_s + time.perf_counter() - start)
            if callback is not None:
                callback(step, state)
    return MDResult(trajectories=trajectories, steps=steps, timestep_fs=timestep_fs,
                    temperature_K=temperature_K, friction_per_ps=friction_per_ps,
                    wall_s=done_s + time.perf_counter() - start, system_steps=system_steps,
                    criterion=criterion(stability_check=stability_check,
                                        min_distance_A=min_distance_A,
                                        max_temperature_factor=max_temperature_factor,
                                        temperature_K=temperature_K))


def _load_trajectory(t: Trajectory, saved: dict[str, Any]) -> None:
    """Fill `t` with what a checkpoint stored of it."""
    t.steps = list(saved["steps"])
    t.positions = [np.asarray(p.numpy()) for p in saved["positions"]]
    t.temperature_K = list(saved["temperature_K"])
    t.potential_energy_eV = list(saved["potential_energy_eV"])
    t.total_energy_eV = list(saved["total_energy_eV"])
    t.failure = None if saved["failure"] is None else Failure(saved["failure"])
    t.failed_step, t.detail = saved["failed_step"], saved["detail"]


def _drop_failed(state: MDState, potential: PotentialLike, trajectories: list[Trajectory],
                 limits: dict[str, Any], *, record: bool) -> MDState:
    """Mark failed systems in `trajectories`, drop them, record the others if `record`."""
    failures = _failures(state, **limits)
    for k, failure in enumerate(failures):
        if failure is not None:
            t = trajectories[int(state.system_ids[k])]
            t.failure, t.detail = failure
            t.failed_step = state.step
    if any(f is not None for f in failures):
        keep = torch.tensor([f is None for f in failures])
        state = select_systems(state, keep, potential)
    if record and state.n_systems:
        _record(state, trajectories)
    return state
