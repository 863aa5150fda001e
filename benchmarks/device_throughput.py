"""Throughput of congener's DimeNet++ on one device (a GPU when present): the figures of issue 22.

One command reports, for 64-atom Ge cells (diamond, 0.1 Å displacements) and the default
DimeNet++ at cutoff 4.3 Å (float32):
- energy+forces: median ms per call of one structure (graph on the device, built once);
- batched MD: system-steps/s of `run_md` (Langevin, 1 fs, skin lists) for 1, 4, 16, 64 and 256
  trajectories in one batch;
- training: structures/s of force-and-energy training steps (the trainer's loop) at batch 8
  and 32.
On the CPU the same script runs (use small `--md-steps` / `--train-steps`); compare devices
only within one run or on the same machine.

`--path` picks the code path: `host` (graphs built through numpy, pruned to the cutoff every
MD step, data-dependent branches: the CPU's default), `device` (graphs built on the device,
the skin graph laid out once per build, branch-free model code: the default on a GPU), `auto`
(whichever the device defaults to) or `both` (each in turn, E+F and MD, in one run: their
ratio on this device).

    .venv/bin/python benchmarks/device_throughput.py [--device cuda] [--md-steps 50] [--path both]
"""

from __future__ import annotations

import argparse
import time

import ase.build
import numpy as np
import torch

import congener.runtime as runtime
import congener.simulation.integrator as integrator
from congener.data.structures import label
from congener.graph import build_graph
from congener.models.checkpoint import build_potential
from congener.models.dimenet import DimeNetConfig
from congener.runtime import resolve_device, tune_allocator
from congener.simulation.md import run_md
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.trainer import fit


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cells(n: int, seed: int = 0) -> list:
    base = ase.build.bulk("Ge", "diamond", a=5.66, cubic=True) * (2, 2, 2)
    out = []
    for k in range(n):
        atoms = base.copy()
        atoms.rattle(0.1, seed=seed + k)
        out.append(atoms)
    return out


def use_path(path: str) -> None:
    """Select MD's graph building and pruning and the model's branches (module doc)."""
    settings = {"auto": ("auto", "auto", None), "host": ("host", "always", False),
                "device": ("device", "never", True)}[path]
    integrator.GRAPH_PATH, integrator.PRUNE, runtime.SYNC_FREE = settings


def energy_forces_ms(potential, device: torch.device, reps: int) -> float:
    """Median ms per energy+forces call of one 64-atom cell (prepared once, as MD does on the
    device path)."""
    graph = build_graph(_cells(1)[0], potential.cutoff).to(device, torch.float32)
    if runtime.sync_free(graph.positions):
        potential.prepare(graph)
    times = []
    for k in range(reps + 2):
        _sync(device)
        t0 = time.perf_counter()
        potential(graph)
        _sync(device)
        if k >= 2:  # two warm-up calls (CUDA kernels, allocator)
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def md_throughput(potential, device: torch.device, batches: list[int], steps: int) -> dict:
    out = {}
    for n in batches:
        result = run_md(potential, _cells(n), temperature_K=600.0, timestep_fs=1.0,
                        steps=steps, sample_every=steps, device=str(device))
        out[n] = result.system_steps_per_s
    return out


def training_throughput(device: torch.device, batch: int, steps: int) -> float:
    """Structures per second over `steps` updates (the first epoch's set-up excluded)."""
    torch.manual_seed(0)
    potential = build_potential(["Ge"], DimeNetConfig(cutoff=4.3))
    teacher = build_potential(["Ge"], DimeNetConfig(cutoff=4.3))
    structures = []
    for atoms in _cells(batch * steps, seed=100):
        pred = teacher(build_graph(atoms, 4.3).to("cpu", torch.float32), stress=True)
        structures.append(label(atoms, energy=float(pred.energy[0]),
                                forces=pred.forces.detach().numpy(),
                                stress=pred.stress[0].detach().numpy()))
    train = LabelledSet(structures, 4.3)
    val = LabelledSet(structures[:batch], 4.3)
    cfg = TrainConfig(epochs=2, batch_size=batch, energy_weight=30.0, device=str(device),
                      val_every=2)
    result = fit(potential, train, val, cfg)
    second = result.history[-1]["seconds"] - result.history[0]["seconds"]  # epoch 2 only
    return len(structures) / max(second, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--md-steps", type=int, default=50)
    parser.add_argument("--batches", default="1,4,16,64,256")
    parser.add_argument("--train-steps", type=int, default=10, help="updates per epoch")
    parser.add_argument("--path", choices=["auto", "host", "device", "both"], default="auto")
    parser.add_argument("--no-training", action="store_true", help="skip the training figures")
    args = parser.parse_args()
    tune_allocator()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    potential = build_potential(["Ge"], DimeNetConfig(cutoff=4.3)).to(device).float().eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} "
          "threads; DimeNet++ default sizes, cutoff 4.3 Å, float32; 64-atom Ge cells")
    batches = [int(b) for b in args.batches.split(",")]
    paths = ["host", "device"] if args.path == "both" else [args.path]
    for path in paths:
        use_path(path)
        ms = energy_forces_ms(potential, device, args.reps)
        print(f"[{path} path] energy+forces, one structure: {ms:.2f} ms")
        for n, rate in md_throughput(potential, device, batches, args.md_steps).items():
            print(f"[{path} path] MD, {n:4d} trajectories: {rate:9.1f} system-steps/s")
    use_path("auto")
    for batch in () if args.no_training else (8, 32):
        rate = training_throughput(device, batch, args.train_steps)
        print(f"training, batch {batch:2d}: {rate:7.1f} structures/s")


if __name__ == "__main__":
    main()
