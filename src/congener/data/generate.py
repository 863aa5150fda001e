"""Stillinger-Weber molecular-dynamics data through LAMMPS (`pair_style sw`).

Protocol per temperature T: a diamond cell of `supercell`³ conventional cells (64 atoms for
2), velocities drawn at T (seeded), Nose-Hoover NPT at `pressure_bar` (isotropic), then the
box is set to the mean edge length of the second half of NPT and Nose-Hoover NVT production
runs, sampled every `sample_every` steps. Each sample is labelled with the potential energy,
forces and virial stress read at full precision through LAMMPS' library interface, its
velocities (as ASE momenta) and `info` temperature = T, group = "SW-MD", source.

Temperatures run in separate processes; each writes its own file to a work folder as soon as
it finishes, so an interrupted generation resumes and skips the finished temperatures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from congener.data.lammps_runtime import num, open_lammps, run_commands
from congener.data.lammps_sw import sw_setup_commands, sw_state
from congener.data.stillinger_weber import load_sw_params, resolve_params_path
from congener.data.structures import label, read_structures, write_structures
from congener.data.sw_protocol import SWProtocol
from congener.errors import ConfigError, CongenerError, DataError
from congener.files import folder_lock, write_text
from congener.parallel import worker_pool

GROUP = "SW-MD"
MANIFEST = "manifest.json"
# LAMMPS metal velocities are Å/ps; ASE velocities are Å per ASE time unit.
ASE_VELOCITY_PER_A_PS = 1.0 / (1000.0 * units.fs)

Progress = Callable[[float, int], None]  # (temperature_K, samples written), once per T


@dataclass(frozen=True)
class _Job:
    element: str
    params_path: str
    protocol: SWProtocol
    temperature_K: float
    seed: int
    out_path: str


def velocity_seed(seed: int, temperature_K: float) -> int:
    """A positive LAMMPS velocity seed derived from the user seed and the temperature."""
    state = np.random.SeedSequence([seed, round(temperature_K * 1000)]).generate_state(1)
    return int(state[0] % 900_000_000) + 1


def _setup(lmp: Any, job: _Job, lattice_A: float) -> None:
    p, n = job.protocol, job.protocol.supercell
    run_commands(lmp, [
        "units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
        f"lattice diamond {num(lattice_A)}", f"region box block 0 {n} 0 {n} 0 {n}",
        "create_box 1 box", "create_atoms 1 box",
        *sw_setup_commands(Path(job.params_path), job.element),
        f"timestep {num(p.timestep_fs / 1000.0)}",
        f"velocity all create {num(job.temperature_K)} "
        f"{velocity_seed(job.seed, job.temperature_K)} mom yes rot no dist gaussian",
        "thermo_style custom step temp pe press vol c_congener_virial[1]",
    ])


def _equilibrate(lmp: Any, job: _Job) -> None:
    """NPT, then fix the box at the mean edge length of the second half of NPT."""
    p, t = job.protocol, num(job.temperature_K)
    dt_ps = p.timestep_fs / 1000.0
    if p.npt_steps == 0:
        return
    run_commands(lmp, [
        f"fix congener_md all npt temp {t} {t} {num(p.tdamp_steps * dt_ps)} "
        f"iso {num(p.pressure_bar)} {num(p.pressure_bar)} {num(p.pdamp_steps * dt_ps)}",
        f"thermo {p.chunk_steps}",
    ])
    edges, done = [], 0
    while done < p.npt_steps:
        steps = min(p.chunk_steps, p.npt_steps - done)
        run_commands(lmp, [f"run {steps} pre {'yes' if done == 0 else 'no'} post no"])
        done += steps
        if done > p.npt_steps // 2:
            lo, hi = lmp.extract_box()[:2]
            edges.append(np.subtract(hi, lo))
    edge = np.mean(edges, axis=0)
    run_commands(lmp, [
        "unfix congener_md",
        "change_box all " + " ".join(f"{d} final 0 {num(e)}" for d, e in zip("xyz", edge,
                                                                           strict=True))
        + " remap units box",
    ])


def _sample(lmp: Any, job: _Job, step: int) -> Atoms:
    energy, forces, stress = sw_state(lmp)
    lo, hi, xy, yz, xz = lmp.extract_box()[:5]
    lx, ly, lz = np.subtract(hi, lo)
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    x = np.array(lmp.gather_atoms("x", 1, 3), dtype=float).reshape(-1, 3) - np.asarray(lo)
    v = np.array(lmp.gather_atoms("v", 1, 3), dtype=float).reshape(-1, 3)
    atoms = Atoms(symbols=[job.element] * len(x), positions=x, cell=cell, pbc=True)
    atoms.set_velocities(v * ASE_VELOCITY_PER_A_PS)
    source = (f"SW-MD:{job.element}:{Path(job.params_path).name}:T={job.temperature_K:g}K:"
              f"seed={job.seed}:step={step}")
    return label(atoms, energy=energy, forces=forces, stress=stress,
                 temperature=job.temperature_K, group=GROUP, source=source)


def run_sw_md(
    element: str,
    protocol: SWProtocol,
    temperature_K: float,
    *,
    params_path: str | Path | None = None,
    seed: int = 0,
) -> list[Atoms]:
    """Run the protocol at one temperature in this process; returns its labelled samples."""
    path = resolve_params_path(element, params_path).resolve()
    return _run(_Job(element, str(path), protocol, float(temperature_K), seed, out_path=""))


def _run(job: _Job) -> list[Atoms]:
    p = job.protocol
    lattice = load_sw_params(job.element, job.params_path).diamond_lattice_constant
    lmp = open_lammps()
    try:
        _setup(lmp, job, lattice)
        _equilibrate(lmp, job)
        t = num(job.temperature_K)
        run_commands(lmp, [f"fix congener_md all nvt temp {t} {t} "
                           f"{num(p.tdamp_steps * p.timestep_fs / 1000.0)}",
                           f"thermo {p.sample_every}"])
        samples = []
        for k in range(p.n_samples):
            run_commands(lmp, [f"run {p.sample_every} pre {'yes' if k == 0 else 'no'} post no"])
            samples.append(_sample(lmp, job, p.npt_steps + (k + 1) * p.sample_every))
    finally:
        lmp.close()
    return samples


def _run_and_write(job: _Job) -> tuple[float, int]:
    samples = _run(job)
    write_structures(job.out_path, samples)
    return job.temperature_K, len(samples)


def temperature_file(workdir: Path, temperature_K: float) -> Path:
    """File of one finished temperature inside the work folder."""
    return workdir / f"T{temperature_K:g}K.extxyz"


def _manifest(element: str, params_path: Path, protocol: SWProtocol, seed: int) -> dict:
    params = load_sw_params(element, params_path)
    return {"element": element, "params": asdict(params),
            "protocol": asdict(protocol), "seed": seed}


def _check_workdir(workdir: Path, manifest: dict) -> None:
    """Create `workdir` or check that it was made with the same settings (temperatures aside)."""
    settings = json.loads(json.dumps(manifest))  # tuples -> lists, as stored
    settings["protocol"].pop("temperatures_K")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / MANIFEST
    if not path.is_file():
        write_text(path, json.dumps(settings, indent=1))
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if stored != settings:
        raise DataError(f"work folder {workdir} holds data made with other settings (see {path}); "
                        "use another folder or remove it")


def generate_sw_data(
    element: str,
    protocol: SWProtocol,
    *,
    workdir: str | Path,
    params_path: str | Path | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[Atoms]:
    """SW-MD samples of `element` at every temperature of `protocol`, in the protocol's order.

    Finished temperatures are kept in `workdir` (one extended-XYZ file each) and skipped when
    the call is repeated with the same settings; a folder made with other settings (element,
    parameters, protocol apart from the temperature list, seed) is refused. `workers` processes
    run temperatures in parallel. `progress(temperature_K, n_samples)` is called as each
    temperature is done (also for those found finished).
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1 (got {workers})")
    path = resolve_params_path(element, params_path).resolve()
    workdir = Path(workdir)
    with folder_lock(workdir, f"the SW work folder {workdir}"):  # a rerun never races another
        _check_workdir(workdir, _manifest(element, path, protocol, seed))
        jobs = [_Job(element, str(path), protocol, t, seed, str(temperature_file(workdir, t)))
                for t in protocol.temperatures_K]
        pending = [j for j in jobs if not Path(j.out_path).is_file()]
        for job in jobs:
            if job not in pending and progress is not None:
                progress(job.temperature_K, protocol.n_samples)
        _run_jobs(pending, workers, progress)
        return [a for job in jobs for a in read_structures(job.out_path)]


def _run_jobs(jobs: Sequence[_Job], workers: int, progress: Progress | None) -> None:
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            done = _run_and_write(job)
            if progress is not None:
                progress(*done)
        return
    with worker_pool(min(workers, len(jobs))) as pool:  # workers die with this process
        futures: set[Future] = {pool.submit(_run_and_write, job) for job in jobs}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_EXCEPTION)
            for future in finished:
                exc = future.exception()
                if exc is not None:
                    for other in futures:
                        other.cancel()
                    if isinstance(exc, BrokenProcessPool):
                        raise CongenerError(
                            "an SW-MD worker process died (killed, out of memory, or a script "
                            "without an `if __name__ == '__main__':` guard); finished "
                            "temperatures are kept, run again to resume"
                        ) from exc
                    raise exc
                if progress is not None:
                    progress(*future.result())
