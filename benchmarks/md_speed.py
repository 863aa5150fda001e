"""MD throughput of the default DimeNet++ on 64-atom Ge: one trajectory vs batched ones.

    .venv/bin/python benchmarks/md_speed.py [--steps 30] [--threads 2] [--batches 1,4,8]

Runs `congener.simulation.md.run_md` (BAOAB, 0.5 fs, 1200 K, friction 1/ps, float32) on copies
of a rattled 2x2x2 diamond Ge cell, for the default model size at cutoff 5.0 and 4.3 Å.
Prints a markdown table of system-steps per second (steps x trajectories / wall time,
initialisation and neighbour-list rebuilds included) and the speed-up over one trajectory.
"""

from __future__ import annotations

import argparse
import os
import platform

import ase.build
import torch

from congener.models.checkpoint import build_potential
from congener.models.dimenet import DimeNetConfig
from congener.simulation.md import run_md


def _structure(seed: int) -> ase.Atoms:
    atoms = ase.build.bulk("Ge", "diamond", a=5.658, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _measure(cutoff: float, batch: int, steps: int, threads: int, skin: float) -> float:
    torch.manual_seed(0)
    potential = build_potential(["Ge"], DimeNetConfig(cutoff=cutoff))
    for out in potential.network.outputs:  # non-zero forces, as in a trained model
        torch.nn.init.normal_(out.lin.weight, std=0.01)
    atoms = [_structure(k) for k in range(batch)]
    kwargs = dict(temperature_K=1200.0, timestep_fs=0.5, friction_per_ps=1.0, seed=0,
                  sample_every=10, min_distance_A=0.5, skin_A=skin, dtype="float32",
                  threads=threads)
    run_md(potential, atoms, steps=3, **kwargs)  # warm-up
    result = run_md(potential, atoms, steps=steps, **kwargs)
    if result.n_stable != batch:
        raise RuntimeError(f"{batch - result.n_stable} trajectories failed in the benchmark")
    return result.system_steps_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--cutoffs", default="5.0,4.3")
    parser.add_argument("--skin", type=float, default=0.5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, load average before: {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}, skin {args.skin} Å, {args.steps} steps\n")
    print("| cutoff (Å) | trajectories | system-steps/s | ms per system-step | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for cutoff in (float(c) for c in args.cutoffs.split(",")):
        base = None
        for batch in batches:
            rate = _measure(cutoff, batch, args.steps, args.threads, args.skin)
            base = rate if base is None else base
            print(f"| {cutoff:g} | {batch} | {rate:.1f} | {1000 / rate:.1f} | "
                  f"{rate / base:.2f} |",
                  flush=True)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
