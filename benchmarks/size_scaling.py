"""Cost of congener's DimeNet++ against system size: energy+forces time, peak memory, MD.

Structures: Ge diamond supercells (a = 5.66 Å) of 64, 512, 4096 and 32,768 atoms, as a
crystal (random displacements of 0.05 Å) and as a liquid-like cell (the same cell with 0.35 Å
displacements, whose neighbour counts vary from atom to atom as in a melt). Model: the
default `DimeNetConfig` at the Ge cutoff 4.3 Å, float32, `--threads` threads (default 2).

Each (structure, size) runs in a fresh subprocess, so that its peak resident memory (VmHWM,
minus the value before the first call: torch, data and model excluded) is its own. Timed:
`build_graph` and `Potential(graph)` (energy and forces), median of `--reps` calls after a
warm-up; per atom, and as the ratio to the 64-atom cost (linear scaling: the per-atom cost
stays flat or falls). MD: steps/s of `run_md` (Langevin, 1 fs, skin lists) at 4096 atoms.

    .venv/bin/python benchmarks/size_scaling.py [--reps 3] [--sizes 64,512,4096,32768]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import ase.build
import numpy as np
import torch

REPS = {64: (1, 1, 1), 512: (2, 2, 2), 4096: (4, 4, 4), 32768: (8, 8, 8)}  # x 64-atom cell


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _structure(n_atoms: int, kind: str):
    cell = ase.build.bulk("Ge", "diamond", a=5.66, cubic=True) * (2, 2, 2)  # 64 atoms
    atoms = cell * REPS[n_atoms]
    atoms.rattle(0.05 if kind == "crystal" else 0.35, seed=1)
    return atoms


def measure(n_atoms: int, kind: str, reps: int, threads: int, md_steps: int) -> dict:
    """One size and kind, in this process (called in a subprocess by `main`)."""
    from congener.graph import build_graph
    from congener.models.checkpoint import build_potential
    from congener.models.dimenet import DimeNetConfig
    from congener.runtime import tune_allocator
    from congener.simulation.md import run_md

    tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    potential = build_potential(["Ge"], DimeNetConfig(cutoff=4.3)).float().eval()
    atoms = _structure(n_atoms, kind)
    before = _peak_kib()
    build, ef = [], []
    for k in range(reps + 1):
        t0 = time.perf_counter()
        graph = build_graph(atoms, potential.cutoff)
        t1 = time.perf_counter()
        potential(graph.to("cpu", torch.float32))
        t2 = time.perf_counter()
        if k:
            build.append(t1 - t0)
            ef.append(t2 - t1)
    out = {"atoms": n_atoms, "kind": kind, "edges": int(graph.edge_index.shape[1]),
           "triplets": int(graph.n_triplets), "build_ms": 1e3 * float(np.median(build)),
           "ef_ms": 1e3 * float(np.median(ef)),
           "peak_mb": (_peak_kib() - before) / 1024}
    if md_steps:
        result = run_md(potential, [atoms], temperature_K=300.0, timestep_fs=1.0,
                        steps=md_steps, sample_every=md_steps, threads=threads)
        out["md_steps_per_s"] = result.system_steps_per_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="64,512,4096,32768")
    parser.add_argument("--kinds", default="crystal,liquid")
    parser.add_argument("--md-steps", type=int, default=20, help="MD steps at 4096 atoms")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # n,kind: run one case and print JSON
    args = parser.parse_args()
    if args.one:
        n, kind = args.one.split(",")
        md = args.md_steps if int(n) == 4096 and kind == "crystal" else 0
        print(json.dumps(measure(int(n), kind, args.reps, args.threads, md)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, DimeNet++ (default sizes, "
          "cutoff 4.3 Å, float32), Ge diamond supercells")
    print("| structure | atoms | edges | triplets | graph (ms) | E+F (ms) | E+F per atom (µs) "
          "| per atom / 64-atom | peak memory (MB) | MD steps/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        base = None
        for n in (int(s) for s in args.sizes.split(",")):
            proc = subprocess.run([sys.executable, __file__, "--one", f"{n},{kind}",
                                   "--reps", str(args.reps), "--threads", str(args.threads),
                                   "--md-steps", str(args.md_steps)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                print(f"| {kind} | {n} | failed: {proc.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            per_atom = 1e3 * r["ef_ms"] / n
            base = base or per_atom
            md = f"{r['md_steps_per_s']:.2f}" if "md_steps_per_s" in r else ""
            print(f"| {kind} | {n} | {r['edges']:,} | {r['triplets']:,} | {r['build_ms']:.1f} | "
                  f"{r['ef_ms']:.1f} | {per_atom:.0f} | {per_atom / base:.2f} | "
                  f"{r['peak_mb']:.0f} | {md} |", flush=True)


if __name__ == "__main__":
    main()
