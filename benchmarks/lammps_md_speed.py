"""MD speed of LAMMPS + `fix external` beside congener's own integrator, default DimeNet++.

    nice -n 19 .venv/bin/python benchmarks/lammps_md_speed.py [--steps 30] [--threads 2]

One process, one rattled 2x2x2 diamond Ge cell (64 atoms), the default DimeNet++ at cutoff
4.3 Å (random weights with non-zero outputs, float32), NVE at 1 fs from the same velocities
(1200 K): `run_md` (friction 0) against `run_lammps` with `fix nve`, with and without the
virial. Steps/s count the steps over the wall time of the MD loop, one initial force call
included in both (LAMMPS's start-up is not). Prints a markdown table and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform

import ase.build
import torch

from congener.models.checkpoint import build_potential
from congener.models.dimenet import DimeNetConfig
from congener.simulation.lammps_md import run_lammps
from congener.simulation.md import md_init, run_md, system_seeds

TEMPERATURE_K = 1200.0


def _setup() -> tuple[torch.nn.Module, ase.Atoms]:
    torch.manual_seed(0)
    potential = build_potential(["Ge"], DimeNetConfig(cutoff=4.3)).to(torch.float32).eval()
    for out in potential.network.outputs:  # non-zero forces, as in a trained model
        torch.nn.init.normal_(out.lin.weight, std=0.01)
    atoms = ase.build.bulk("Ge", "diamond", a=5.658, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    start = md_init([atoms], potential, temperature_K=TEMPERATURE_K, seed=system_seeds(0, 1))
    atoms.set_momenta(start.momenta.numpy())
    return potential, atoms


def _congener(potential, atoms: ase.Atoms, steps: int, threads: int) -> float:
    result = run_md(potential, [atoms], temperature_K=TEMPERATURE_K, timestep_fs=1.0,
                    steps=steps, friction_per_ps=0.0, seed=0, sample_every=10,
                    stability_check=False, threads=threads)
    return steps / result.wall_s


def _lammps(potential, atoms: ase.Atoms, steps: int, threads: int, virial: bool) -> float:
    commands = ["fix nve all nve", "timestep 0.001", "thermo 10", f"run {steps}"]
    result = run_lammps(potential, atoms, commands, virial=virial, threads=threads)
    return steps / result.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    potential, atoms = _setup()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, load average before: {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}, 64-atom Ge, DimeNet++ cutoff 4.3 Å float32, {args.steps} NVE "
          "steps\n")
    runs = {
        "congener run_md (velocity Verlet)": lambda n: _congener(potential, atoms, n,
                                                                 args.threads),
        "LAMMPS fix nve + fix external, virial": lambda n: _lammps(potential, atoms, n,
                                                                   args.threads, True),
        "LAMMPS fix nve + fix external, no virial": lambda n: _lammps(potential, atoms, n,
                                                                      args.threads, False),
    }
    print("| engine | steps/s | ms per step | ratio to congener |")
    print("|---|---:|---:|---:|")
    base = None
    for name, measure in runs.items():
        measure(3)  # warm-up
        rate = measure(args.steps)
        base = rate if base is None else base
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} | {rate / base:.2f} |", flush=True)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
