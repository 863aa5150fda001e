"""CPU speed of the working tree against an earlier commit, measured side by side.

Each round runs the same measurement in a fresh process for the base commit (checked out to a
temporary git worktree) and for this tree, alternating, so that a noisy machine loads both
alike: energy+forces of one 64-atom Ge cell (median of 20 calls after 5 warm-ups) and batched
MD of four such cells (Langevin at 1200 K, 150 steps), one thread, default DimeNet++ at
4.3 Å in float32. It prints each round and the median of the per-round ratios new/base.

    .venv/bin/python benchmarks/compare_commits.py --base 7709c33 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r'''
import json, time, numpy as np, torch, ase.build
from congener.graph import build_graph
from congener.models.checkpoint import build_potential
from congener.models.dimenet import DimeNetConfig
from congener.simulation.md import run_md
from congener.runtime import tune_allocator
tune_allocator(); torch.set_num_threads(1); torch.manual_seed(0)
pot = build_potential(["Ge"], DimeNetConfig(cutoff=4.3)).float().eval()
base = ase.build.bulk("Ge", "diamond", a=5.66, cubic=True) * (2, 2, 2)
cells = []
for k in range(4):
    a = base.copy(); a.rattle(0.1, seed=k); cells.append(a)
g = build_graph(cells[0], 4.3).to("cpu", torch.float32)
t = []
for k in range(25):
    t0 = time.perf_counter(); pot(g); t.append(time.perf_counter() - t0)
res = run_md(pot, cells, temperature_K=1200.0, timestep_fs=1.0, steps=150, sample_every=150,
             threads=1)
print(json.dumps({"ef_ms": 1e3 * float(np.median(t[5:])), "md": res.system_steps_per_s}))
'''


def measure(src: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        args.base], check=True)
        try:
            rows = []
            for r in range(args.rounds):
                base, new = measure(tree / "src"), measure(ROOT / "src")
                rows.append((base, new))
                print(f"round {r}: base E+F {base['ef_ms']:.1f} ms, MD {base['md']:.1f} "
                      f"system-steps/s; new E+F {new['ef_ms']:.1f} ms, MD {new['md']:.1f}",
                      flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
    for key, label in (("ef_ms", "E+F time"), ("md", "MD throughput")):
        ratios = [n[key] / b[key] for b, n in rows]
        print(f"{label} new/base: median {np.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
