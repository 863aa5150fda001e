"""Speed of congener's DimeNet++ on a CPU: force-matching training step and energy + forces.

Structures: 64-atom diamond Si (a = 5.43 Å) with random displacements (`rattle`, normal with
sigma 0.05 Å: "crystal"; sigma 0.3 Å: "hot", whose neighbour counts vary from atom to atom).
At cutoff 5 Å a crystal cell has 1792 edges and 48384 triplets, at 4.3 Å 1024 and 15360.
Model: the default `DimeNetConfig` (123,174 parameters), float32, `--threads` intra-op threads
(default 2), glibc allocator tuned (`congener.runtime.tune_allocator`).

Timed, interleaved over `--reps` rounds, medians reported:
- train: one step as `congener.training.trainer` does it on a batch of 8 labelled structures
  (collate the cached graphs, `Potential(create_graph=True)`, force MSE loss, `backward()`,
  Adam step); reported per structure and per batch;
- E+F: `Potential(graph)` (energy and forces) of one structure, graph already built; the time
  of `build_graph` for one structure is reported beside it.
Peak memory: peak resident set (VmHWM) of a fresh subprocess that runs training steps on a
batch of 8, minus its value just before the first step (torch, data and model excluded).

In the chemtrain table congener is timed again right after each chemtrain run (same load).

`--compare REV` runs the DimeNet++ of git revision REV (its models/dimenet.py and basis.py) in
the same process, interleaved, on the same weights. `--chemtrain` runs the same structures
through chemtrain 0.2.0 (`benchmarks/chemtrain_dimenet.py`) in `.bench/chemtrain-venv`,
creating that virtual environment if needed (needs python3.11 and PyPI).

    .venv/bin/python benchmarks/dimenet_speed.py [--reps 5] [--compare HEAD~3] [--chemtrain]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from congener.graph import build_graph
from congener.models.dimenet import DimeNetConfig, DimeNetPP
from congener.models.potential import Potential
from congener.runtime import tune_allocator
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.losses import loss

ROOT = Path(__file__).resolve().parents[1]
CHEMTRAIN_VENV = ROOT / ".bench" / "chemtrain-venv"
# chemtrain 0.2.0 and the versions it resolved to on 2026-11 (Python 3.11, CPU); pinned
CHEMTRAIN_PINS = [
    "chemtrain==0.2.0", "jax==0.4.37", "jaxlib==0.4.36", "jax-md==0.2.8", "dm-haiku==0.0.17",
    "optax==0.2.5", "chex==0.1.90", "flax==0.10.4", "e3nn-jax==0.21.0", "jax-sgmc==0.1.5",
    "jraph==0.0.6.dev0", "blackjax==0.3.0", "jaxopt==0.8.5", "numpy==1.26.4", "scipy==1.12.0",
    "protobuf==3.20.0", "ase==3.29.0",
]
KINDS = {"crystal": 0.05, "hot": 0.3}
BATCH = 8


def structures(kind: str, n: int, seed: int = 0) -> list[Atoms]:
    """64-atom diamond Si, rattled; labelled with random energies and forces."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        atoms.rattle(KINDS[kind], seed=seed + k)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()),
                                           forces=rng.normal(size=(len(atoms), 3)))
        out.append(atoms)
    return out


def load_revision(rev: str) -> types.ModuleType:
    """models/dimenet.py (with its basis.py) of git revision `rev` as a module."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    tag = "".join(ch if ch.isalnum() else "_" for ch in rev)
    basis = types.ModuleType(f"_basis_{tag}")
    sys.modules[basis.__name__] = basis
    exec(compile(show("src/congener/models/basis.py"), f"{rev}:basis.py", "exec"),
         basis.__dict__)
    src = show("src/congener/models/dimenet.py").replace(
        "from congener.models.basis import", f"from {basis.__name__} import")
    module = types.ModuleType(f"_dimenet_{tag}")
    sys.modules[module.__name__] = module
    exec(compile(src, f"{rev}:dimenet.py", "exec"), module.__dict__)
    return module


def make_potential(net_cls: type, cutoff: float, state: dict | None = None) -> Potential:
    torch.manual_seed(0)
    net = net_cls(DimeNetConfig(cutoff=cutoff))
    for out in net.outputs:  # the default output init is zero: forces would be zero
        torch.nn.init.normal_(out.lin.weight, std=0.1)
    pot = Potential(net, ["Si"]).float()
    if state is not None:
        pot.load_state_dict(state)
    return pot


class Case:
    """One model on one data set: a training step on a batch and E+F of one structure."""

    def __init__(self, pot: Potential, data: LabelledSet, single: Atoms,
                 params_only: bool = False) -> None:
        self.pot, self.data, self.params_only = pot, data, params_only
        self.opt = torch.optim.Adam(pot.parameters(), lr=1e-5)
        self.graph1 = build_graph(single, pot.cutoff).to(dtype=torch.float32)
        self.step = 0

    def train_step(self) -> None:
        start = (self.step * BATCH) % len(self.data)
        self.step += 1
        graph, ref = self.data.batch(range(start, start + BATCH))
        graph, ref = graph.to(dtype=torch.float32), ref.to(torch.device("cpu"), torch.float32)
        self.opt.zero_grad(set_to_none=True)
        pred = self.pot(graph, create_graph=True)
        terms = loss(pred, ref, TrainConfig())
        if self.params_only:  # gradients of the parameters only, not of the positions leaf
            terms.total.backward(inputs=[p for p in self.pot.parameters() if p.requires_grad])
        else:  # as congener.training.trainer does
            terms.total.backward()
        self.opt.step()

    def energy_forces(self) -> None:
        self.pot(self.graph1)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss, not inherited on exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(cutoff: float, kind: str) -> None:
    """Subprocess body: peak RSS growth over training steps on a batch of 8."""
    tune_allocator()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    case = Case(make_potential(DimeNetPP, cutoff), LabelledSet(structures(kind, BATCH), cutoff),
                structures(kind, 1)[0])
    before = peak_rss_mb()
    for _ in range(3):
        case.train_step()
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb()}))


def peak_memory(cutoff: float, kind: str, threads: int) -> dict:
    env = dict(os.environ, BENCH_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(cutoff), kind],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_chemtrain_venv() -> Path:
    python = CHEMTRAIN_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(CHEMTRAIN_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CHEMTRAIN_PINS], check=True)
    return python


def run_chemtrain(cutoff: float, kind: str, reps: int, threads: int) -> dict:
    python = ensure_chemtrain_venv()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "structures.extxyz"
        ase.io.write(path, structures(kind, 2 * BATCH))
        out = subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "chemtrain_dimenet.py"), str(path),
             "--cutoff", str(cutoff), "--batch", str(BATCH), "--reps", str(reps),
             "--threads", str(threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_set(cutoff: float, kind: str, reps: int, compare: str | None,
             params_only: bool) -> dict:
    """Time every model on one structure set (run in its own process: see `timing_child`)."""
    models = {"congener": DimeNetPP}
    if compare:
        models[compare] = load_revision(compare).DimeNetPP
    data = LabelledSet(structures(kind, 2 * BATCH), cutoff)
    single = structures(kind, 1, seed=100)[0]
    cases: dict[str, Case] = {}
    state = None
    for name, cls in models.items():
        pot = make_potential(cls, cutoff, state)
        state = pot.state_dict()
        cases[name] = Case(pot, data, single)
    if params_only:
        cases["congener, backward(inputs=params)"] = Case(
            make_potential(DimeNetPP, cutoff, state), data, single, params_only=True)
    for case in cases.values():  # warm-up
        case.train_step()
        case.energy_forces()
    train: dict[str, list[float]] = {k: [] for k in cases}
    ef: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):  # interleaved, so that all models see the same load
        for key, case in cases.items():
            # the first call after switching model pays for the other model's memory layout;
            # the trainer runs one model step after step, so that call is not counted
            train[key] += timed(case.train_step, 3)[1:]
            ef[key] += timed(case.energy_forces, 6)[1:]
    g = cases["congener"].graph1
    return {"info": f"{g.edge_index.shape[1]} edges, {g.n_triplets} triplets",
            "train_ms": {k: 1000 * statistics.median(v) for k, v in train.items()},
            "ef_ms": {k: 1000 * statistics.median(v) for k, v in ef.items()},
            "build_ms": 1000 * statistics.median(timed(lambda: build_graph(single, cutoff), 20))}


def timing_child(argv: list[str]) -> None:
    """Subprocess body: `time_set` for one structure set, printed as JSON.

    Each set runs in a fresh process, as one training run would: a process that had already
    run the other cutoffs carries their larger heap and is 5-10 % slower per step."""
    cutoff, kind, reps, threads, compare, params_only = argv
    tune_allocator()
    torch.set_num_threads(int(threads))
    print(json.dumps(time_set(float(cutoff), kind, int(reps), compare or None,
                              params_only == "1")))


def run_timing(cutoff: float, kind: str, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--timing-child", str(cutoff), kind, str(args.reps),
         str(args.threads), args.compare or "", "1" if args.params_only else "0"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cutoffs", type=float, nargs="+", default=[5.0, 4.3])
    ap.add_argument("--kinds", nargs="+", default=["crystal", "hot"], choices=sorted(KINDS))
    ap.add_argument("--compare", metavar="REV", help="also time DimeNet++ of this git revision")
    ap.add_argument("--chemtrain", action="store_true", help="compare with chemtrain 0.2.0")
    ap.add_argument("--params-only", action="store_true",
                    help="also time the step with backward(inputs=parameters)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--memory-child", nargs=2, metavar=("CUTOFF", "KIND"), help=argparse.SUPPRESS)
    ap.add_argument("--timing-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(float(args.memory_child[0]), args.memory_child[1])
        return
    if args.timing_child:
        timing_child(args.timing_child)
        return

    loads = [load()]
    results = {}
    for cutoff in args.cutoffs:
        for kind in args.kinds:
            results[cutoff, kind] = run_timing(cutoff, kind, args)
            loads.append(load())

    print(f"torch {torch.__version__}, {args.threads} threads, float32, "
          f"{os.cpu_count()} CPUs; {args.reps} rounds; {loads[0]} at start, {loads[-1]} at end")
    print()
    print("| model | cutoff Å | structures | train ms/structure (batch 8) | train ms/batch | "
          "E+F ms (1 structure) |")
    print("|---|---|---|---|---|---|")
    for (cutoff, kind), res in results.items():
        for name, t in res["train_ms"].items():
            print(f"| {name} | {cutoff} | {kind} ({res['info']}) | {t / BATCH:.1f} | "
                  f"{t:.0f} | {res['ef_ms'][name]:.1f} |")
    print()
    print("build_graph of one crystal structure (vesin + triplets): " + ", ".join(
        f"{results[c, k]['build_ms']:.1f} ms at {c} Å" for c, k in results if k == "crystal"))

    if not args.no_memory:
        print()
        print("Peak memory of training on a batch of 8 (VmHWM growth of a fresh process):")
        for cutoff in args.cutoffs:
            for kind in args.kinds:
                mem = peak_memory(cutoff, kind, args.threads)
                print(f"- cutoff {cutoff} Å, {kind}: +{mem['peak_mb'] - mem['before_mb']:.0f} MB "
                      f"(peak RSS {mem['peak_mb']:.0f} MB)")

    if args.chemtrain:
        print()
        print("| cutoff Å | structures | chemtrain 0.2.0 train ms/batch | congener | ratio | "
              "chemtrain E+F ms (nbr update incl. / excl.) | congener | ratio (excl.) |")
        print("|---|---|---|---|---|---|---|---|")
        for cutoff in args.cutoffs:
            for kind in args.kinds:
                ct = run_chemtrain(cutoff, kind, args.reps, args.threads)
                # congener again right after chemtrain, so that both see similar load; its
                # step as the trainer takes it: gradients of the parameters only, as jax.grad
                # of the loss with respect to the parameters computes in chemtrain
                res = run_timing(cutoff, kind, argparse.Namespace(**{**vars(args),
                                                                     "params_only": True}))
                key = "congener, backward(inputs=params)"
                t, e = res["train_ms"][key], res["ef_ms"]["congener"]
                print(f"| {cutoff} | {kind} | {ct['train_ms']:.0f} | {t:.0f} | "
                      f"{ct['train_ms'] / t:.1f}x | {ct['ef_ms']:.1f} / {ct['ef_model_ms']:.1f} | "
                      f"{e:.1f} | {ct['ef_model_ms'] / e:.1f}x |")
                compile_s = ct["compile_train_s"] + ct["compile_ef_s"]
                print(f"<!-- chemtrain {cutoff} {kind}: {ct['n_params']} parameters, "
                      f"{ct['max_edges']} edges, {ct['max_triplets']} triplets, JIT compile "
                      f"{compile_s:.0f} s (not timed), {load()} -->")


if __name__ == "__main__":
    main()
