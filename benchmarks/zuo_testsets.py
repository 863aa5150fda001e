"""Models against Zuo et al.'s MTP and GAP on both test sets: the whole test.json (surfaces
included, the set Zuo et al. report) and the surface-free set the DimeNet++ paper and congener's
studies use. Run after a study; the models are read, nothing is trained or chosen here.

    python benchmarks/zuo_testsets.py --study bench-runs/ge10-validation --arm scaled --size 10
    python benchmarks/zuo_testsets.py --model runs/ge/model.pt --element Ge

Prints per set the energy and force MAE (mean ± sample std over the models), per group for the
whole set, and the reference MAEs of Zuo et al. (README of ../shared/data/mlearn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from congener.analysis.errors import breakdown, evaluate, metrics
from congener.data.mlearn import read_mlearn
from congener.models.checkpoint import load_potential

ROOT = Path(__file__).resolve().parents[1]

# Zuo et al. 2020, test MAEs: energy (meV/atom), force (eV/Å)
REFERENCE = {"Si": {"MTP": (2.21, 0.06), "GAP": (2.91, 0.07)},
             "Ge": {"MTP": (1.79, 0.05), "GAP": (2.06, 0.05)}}


def _models(args: argparse.Namespace) -> list[Path]:
    if args.model:
        return [Path(m) for m in args.model]
    runs = Path(args.study) / "runs"
    found = sorted(runs.glob(f"{args.arm}-n{args.size}-s*/model.pt"))
    if not found:
        raise SystemExit(f"no models {runs}/{args.arm}-n{args.size}-s*/model.pt")
    return found


def _fmt(values: list[float], digits: int) -> str:
    v = np.asarray(values)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mlearn"))
    ap.add_argument("--element", default="Ge")
    ap.add_argument("--model", nargs="+", default=None, help="model files")
    ap.add_argument("--study", default=None, help="a study folder (with --arm, --size)")
    ap.add_argument("--arm", default="transfer")
    ap.add_argument("--size", type=int, default=10)
    args = ap.parse_args()
    if not (args.model or args.study):
        ap.error("give --model or --study")
    folder = Path(args.data) / args.element
    sets = {"whole test set (surfaces included)": read_mlearn(folder, split="test"),
            "surface-free test set": read_mlearn(folder, split="test", surfaces=False)}
    models = _models(args)
    rows: dict[str, list[dict]] = {name: [] for name in sets}
    groups: dict[str, list[dict]] = {}
    for path in models:
        potential = load_potential(path)
        for name, structures in sets.items():
            ev = evaluate(potential, structures)
            rows[name].append(metrics(ev))
            if name.startswith("whole"):
                for g, m in breakdown(ev, "group").items():
                    groups.setdefault(g, []).append(m)
    print(f"{len(models)} model(s): " + ", ".join(str(p.parent.name) for p in models))
    print("\n| test set | structures | E MAE (meV/atom) | F MAE (eV/Å) |\n|---|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {len(sets[name])} | {_fmt([m['energy_mae'] for m in ms], 2)} | "
              f"{_fmt([m['force_mae'] for m in ms], 4)} |")
    for method, (e, f) in REFERENCE.get(args.element, {}).items():
        print(f"| Zuo et al. {method} (whole test set) | | {e} | {f} |")
    print("\nwhole test set by group:\n\n| group | E MAE (meV/atom) | F MAE (eV/Å) |\n"
          "|---|---|---|")
    for g, ms in sorted(groups.items()):
        print(f"| {g} | {_fmt([m['energy_mae'] for m in ms], 2)} | "
              f"{_fmt([m['force_mae'] for m in ms], 4)} |")


if __name__ == "__main__":
    main()
