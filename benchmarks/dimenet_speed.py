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
- E+F: `Potential(graph)` (energy and forces) of one structure, graph already built, timed
  twice: first in a phase of E+F calls only, as MD and evaluation run them (and as chemtrain's
  E+F is timed, before its training steps), then between training steps (the heap and caches
  the training steps leave make it 10-20 % slower; this is the figure of sessions 5-10). The
  time of `build_graph` for one structure is reported beside it.
Peak memory: peak resident set (VmHWM) of a fresh subprocess that runs training steps on a
batch of 8, minus its value just before the first step (torch, data and model excluded).

In the chemtrain table both run side by side, alternating round by round: chemtrain in its
own process answering timing requests (`chemtrain_dimenet.py --serve`), congener in a fresh
process of its own per structure set. E+F rounds first, in both before any training
(congener 6 calls, chemtrain 6), then training rounds (3 steps each, congener's as the
trainer takes it: the gradients of the parameters only); the ratio of each round's medians,
whose median and range are reported, is what a slow drift of this virtual machine's speed
leaves alone.

`--compare REV` runs congener of git revision REV (its whole package, graphs included) in the
same process, interleaved, on the same weights. `--chemtrain` runs the same structures
through chemtrain 0.2.0 (`benchmarks/chemtrain_dimenet.py`) in `.bench/chemtrain-venv`,
creating that virtual environment if needed (needs python3.11 and PyPI).

    .venv/bin/python benchmarks/dimenet_speed.py [--reps 5] [--compare HEAD~3] [--chemtrain]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
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

from congener.runtime import tune_allocator

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


def load_revision(rev: str) -> types.SimpleNamespace:
    """congener's package as of git revision `rev`, imported under another name."""
    tag = "congener_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    where = Path(tempfile.mkdtemp(prefix="congener-rev-"))
    archive = subprocess.run(["git", "archive", rev, "src/congener"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    (where / "src" / "congener").rename(where / tag)
    for path in (where / tag).rglob("*.py"):
        text = re.sub(r"\bcongener\.", f"{tag}.", path.read_text())
        path.write_text(text.replace("from congener import", f"from {tag} import"))
    sys.path.insert(0, str(where))
    return package(tag)


def package(name: str = "congener") -> types.SimpleNamespace:
    """What the benchmark uses of one congener package (this tree's, or a revision's)."""
    def mod(path: str) -> types.ModuleType:
        return importlib.import_module(f"{name}.{path}")
    dimenet = mod("models.dimenet")
    return types.SimpleNamespace(
        DimeNetPP=dimenet.DimeNetPP, DimeNetConfig=dimenet.DimeNetConfig,
        Potential=mod("models.potential").Potential, build_graph=mod("graph").build_graph,
        LabelledSet=mod("training.data").LabelledSet, loss=mod("training.losses").loss,
        TrainConfig=mod("training.config").TrainConfig)


def make_potential(pkg: types.SimpleNamespace, cutoff: float, state: dict | None = None
                   ) -> torch.nn.Module:
    torch.manual_seed(0)
    net = pkg.DimeNetPP(pkg.DimeNetConfig(cutoff=cutoff))
    for out in net.outputs:  # the default output init is zero: forces would be zero
        torch.nn.init.normal_(out.lin.weight, std=0.1)
    pot = pkg.Potential(net, ["Si"]).float()
    if state is not None:
        pot.load_state_dict(state)
    return pot


class Case:
    """One model on one data set: a training step on a batch and E+F of one structure."""

    def __init__(self, pkg: types.SimpleNamespace, pot: torch.nn.Module, data: list[Atoms],
                 single: Atoms, params_only: bool = False) -> None:
        self.pkg, self.pot, self.params_only = pkg, pot, params_only
        self.data = pkg.LabelledSet(data, pot.cutoff)
        self.opt = torch.optim.Adam(pot.parameters(), lr=1e-5)
        self.graph1 = pkg.build_graph(single, pot.cutoff).to(dtype=torch.float32)
        self.step = 0

    def train_step(self) -> None:
        start = (self.step * BATCH) % len(self.data)
        self.step += 1
        graph, ref = self.data.batch(range(start, start + BATCH))
        graph, ref = graph.to(dtype=torch.float32), ref.to(torch.device("cpu"), torch.float32)
        self.opt.zero_grad(set_to_none=True)
        pred = self.pot(graph, create_graph=True)
        terms = self.pkg.loss(pred, ref, self.pkg.TrainConfig())
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
    pkg = package()
    case = Case(pkg, make_potential(pkg, cutoff), structures(kind, BATCH), structures(kind, 1)[0])
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


def side_by_side(cutoff: float, kind: str, reps: int, threads: int) -> dict:
    """chemtrain and congener alternating round by round on the same structures."""
    python = ensure_chemtrain_venv()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "structures.extxyz"
        ase.io.write(path, structures(kind, 2 * BATCH))
        server = subprocess.Popen(
            [str(python), str(ROOT / "benchmarks" / "chemtrain_dimenet.py"), str(path),
             "--cutoff", str(cutoff), "--batch", str(BATCH), "--threads", str(threads),
             "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdin is not None and server.stdout is not None

        def answer() -> dict:  # the next JSON line (chemtrain prints other lines too)
            for line in server.stdout:
                if line.startswith("{"):
                    return json.loads(line)
            raise RuntimeError(f"chemtrain exited with code {server.wait()}")

        def ask(what: str, n: int) -> dict:
            server.stdin.write(f"{what} {n}\n")
            server.stdin.flush()
            return answer()

        info = answer()

        tune_allocator()
        torch.set_num_threads(threads)
        pkg = package()
        case = Case(pkg, make_potential(pkg, cutoff), structures(kind, 2 * BATCH),
                    structures(kind, 1, seed=100)[0], params_only=True)
        timed(case.energy_forces, 3)
        ask("ef", 2)
        rounds: dict[str, list[tuple[float, float]]] = {"ef": [], "train": []}
        for _ in range(reps):
            ours = statistics.median(timed(case.energy_forces, 7)[1:])
            theirs = statistics.median(ask("ef", 6)["ef_model_ms"]) / 1000
            rounds["ef"].append((theirs, ours))
        case.train_step()
        info["compile_train_s"] = ask("train", 1)["compile_train_s"]
        for _ in range(reps):
            ours = statistics.median(timed(case.train_step, 3)[1:])
            theirs = statistics.median(ask("train", 2)["train_ms"]) / 1000
            rounds["train"].append((theirs, ours))
        server.stdin.close()
        server.wait()
    out = {"info": info}
    for what, pairs in rounds.items():
        ratios = sorted(t / o for t, o in pairs)
        out[what] = {"chemtrain_ms": 1000 * statistics.median(t for t, _ in pairs),
                     "congener_ms": 1000 * statistics.median(o for _, o in pairs),
                     "ratio": statistics.median(ratios), "ratio_min": ratios[0],
                     "ratio_max": ratios[-1]}
    return out


def time_set(cutoff: float, kind: str, reps: int, compare: str | None,
             params_only: bool) -> dict:
    """Time every model on one structure set (run in its own process: see `timing_child`)."""
    packages = {"congener": package()}
    if compare:
        packages[compare] = load_revision(compare)
    data = structures(kind, 2 * BATCH)
    single = structures(kind, 1, seed=100)[0]
    cases: dict[str, Case] = {}
    state = None
    for name, pkg in packages.items():
        pot = make_potential(pkg, cutoff, state)
        state = pot.state_dict()
        cases[name] = Case(pkg, pot, data, single)
    if params_only:
        pkg = packages["congener"]
        cases["congener, backward(inputs=params)"] = Case(
            pkg, make_potential(pkg, cutoff, state), data, single, params_only=True)
    # E+F alone first, as MD runs it; the first call after switching model is not counted
    # (it pays for the other model's memory layout)
    md: dict[str, list[float]] = {k: [] for k in cases}
    for case in cases.values():
        timed(case.energy_forces, 3)
    for _ in range(reps):
        for key, case in cases.items():
            md[key] += timed(case.energy_forces, 7)[1:]
    for case in cases.values():  # warm-up
        case.train_step()
    train: dict[str, list[float]] = {k: [] for k in cases}
    ef: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):  # interleaved, so that all models see the same load
        for key, case in cases.items():
            train[key] += timed(case.train_step, 3)[1:]
            ef[key] += timed(case.energy_forces, 6)[1:]
    g = cases["congener"].graph1
    build = packages["congener"].build_graph
    return {"info": f"{g.edge_index.shape[1]} edges, {g.n_triplets} triplets",
            "train_ms": {k: 1000 * statistics.median(v) for k, v in train.items()},
            "ef_ms": {k: 1000 * statistics.median(v) for k, v in md.items()},
            "ef_train_ms": {k: 1000 * statistics.median(v) for k, v in ef.items()},
            "build_ms": 1000 * statistics.median(timed(lambda: build(single, cutoff), 20))}


def side_child(cutoff: str, kind: str, reps: str, threads: str) -> None:
    """Subprocess body: `side_by_side` for one structure set, printed as JSON."""
    print(json.dumps(side_by_side(float(cutoff), kind, int(reps), int(threads))))


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
    ap.add_argument("--side-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side_child:
        side_child(*args.side_child)
        return
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
          "E+F ms (1 structure) | E+F between training steps |")
    print("|---|---|---|---|---|---|---|")
    for (cutoff, kind), res in results.items():
        for name, t in res["train_ms"].items():
            print(f"| {name} | {cutoff} | {kind} ({res['info']}) | {t / BATCH:.1f} | "
                  f"{t:.0f} | {res['ef_ms'][name]:.1f} | {res['ef_train_ms'][name]:.1f} |")
    print()
    print("build_graph of one crystal structure (vesin + reverse edges): " + ", ".join(
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
        print(f"chemtrain 0.2.0 side by side, {args.reps} alternating rounds (medians; ratio: "
              "median of the rounds' ratios, with their range):")
        print()
        print("| cutoff Å | structures | chemtrain train ms/batch | congener | ratio | "
              "chemtrain E+F ms | congener | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for cutoff in args.cutoffs:
            for kind in args.kinds:
                out = subprocess.run(
                    [sys.executable, __file__, "--side-child", str(cutoff), kind,
                     str(args.reps), str(args.threads)],
                    check=True, capture_output=True, text=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                tr, ef, ct = res["train"], res["ef"], res["info"]
                print(f"| {cutoff} | {kind} | {tr['chemtrain_ms']:.0f} | "
                      f"{tr['congener_ms']:.0f} ({tr['congener_ms'] / BATCH:.1f} per structure) "
                      f"| {tr['ratio']:.1f}x ({tr['ratio_min']:.1f}-{tr['ratio_max']:.1f}) | "
                      f"{ef['chemtrain_ms']:.1f} | {ef['congener_ms']:.1f} | {ef['ratio']:.1f}x "
                      f"({ef['ratio_min']:.1f}-{ef['ratio_max']:.1f}) |")
                compile_s = ct["compile_train_s"] + ct["compile_ef_s"]
                print(f"<!-- chemtrain {cutoff} {kind}: {ct['n_params']} parameters, "
                      f"{ct['max_edges']} edges, {ct['max_triplets']} triplets, JIT compile "
                      f"{compile_s:.0f} s (not timed), {load()} -->")


if __name__ == "__main__":
    main()
