"""Accuracy of DimeNet++ on the Zuo et al. Si DFT data (surfaces excluded, its train/test split).

Usage:
    python benchmarks/accuracy_si.py --mode energy --epochs 300 -o bench-runs/si-energy
    python benchmarks/accuracy_si.py --mode forces --epochs 300 -o bench-runs/si-forces
    python benchmarks/accuracy_si.py --mode energy --init bench-runs/si-forces/model.pt \
        --epochs 50 --lr 5e-4 --lr-final 1e-5 -o bench-runs/si-two-stage
    python benchmarks/accuracy_si.py --mode forces --model hidden=64,out_emb=128,int_emb=32 ...
    python benchmarks/accuracy_si.py --stages benchmarks/stages/si_chain.yaml -o bench-runs/si-chain

With --stages, a chain of stages (training.stages) whose stopping stage the validation set
chooses; the test set is read once, after the choice (the options above give the base settings
that each stage overrides).

Trains on training.json (minus a validation subset), evaluates test.json and prints a
markdown row with test MAE/RMSE, per-group errors, and the wall time. Reads the data from
../shared/data/mlearn (or --data). Resumable: rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from congener.analysis.errors import breakdown, evaluate, metrics
from congener.data.mlearn import read_mlearn_splits
from congener.data.split import random_split
from congener.models.checkpoint import build_potential, load_potential
from congener.models.dimenet import DimeNetConfig
from congener.training import LabelledSet, TrainConfig, fit
from congener.training.config import LOSSES, from_dict

ROOT = Path(__file__).resolve().parents[1]


def model_config(cutoff: float, sizes: str) -> DimeNetConfig:
    """DimeNetConfig from the cutoff and "key=value,..." (integer sizes; not the cutoff)."""
    try:
        pairs = {k: int(v) for k, v in (item.split("=", 1) for item in sizes.split(",") if item)}
    except ValueError:
        raise SystemExit(f"--model: expected key=integer,... (got {sizes!r})") from None
    if "cutoff" in pairs:
        raise SystemExit("--model: give the cutoff with --cutoff")
    return from_dict(DimeNetConfig, {"cutoff": cutoff, **pairs}, "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mlearn"))
    parser.add_argument("--element", default="Si")
    parser.add_argument("--mode", choices=["energy", "forces"], default="energy")
    parser.add_argument("--energy-weight", type=float, default=100.0)
    parser.add_argument("--stress-weight", type=float, default=0.0,
                        help="Weight of the stress MSE (GPa^2) in energy mode")
    parser.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss)
    parser.add_argument("--huber-delta", type=float, default=TrainConfig.huber_delta)
    parser.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-final", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val", type=int, default=10)
    parser.add_argument("--cutoff", type=float, default=4.3)
    parser.add_argument("--model", default="", metavar="KEY=VALUE,...",
                        help="DimeNet++ sizes other than the default, e.g. "
                             "hidden=64,out_emb=128,int_emb=32,basis_emb=4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="Intra-op threads (default: all cores; 1 to run two side by side)")
    parser.add_argument("--init", default=None,
                        help="Start from this checkpoint (two-stage: force-only, then energy)")
    parser.add_argument("--stages", default=None,
                        help="YAML of a stage chain (training.stages): stop chosen on validation")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    if args.init and args.model:
        parser.error("--model sets the sizes of a new model; --init keeps those of its checkpoint")
    out = Path(args.output or f"bench-runs/{args.element.lower()}-{args.mode}")
    splits = read_mlearn_splits(Path(args.data) / args.element, surfaces=False)
    split = random_split(len(splits["train"]), val=args.val, seed=args.seed)
    train = [splits["train"][k] for k in split.train]
    val = [splits["train"][k] for k in split.val]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      lr_final=args.lr_final, seed=args.seed, loss=args.loss,
                      huber_delta=args.huber_delta, ema_decay=args.ema_decay,
                      warmup_steps=args.warmup_steps, threads=args.threads,
                      energy_weight=args.energy_weight if args.mode == "energy" else 0.0,
                      stress_weight=args.stress_weight if args.mode == "energy" else 0.0)
    torch.manual_seed(args.seed)
    pot = (load_potential(args.init) if args.init
           else build_potential([args.element], model_config(args.cutoff, args.model)))
    tset, vset = LabelledSet(train, args.cutoff), LabelledSet(val, args.cutoff)
    start = time.perf_counter()
    if args.stages:
        _chain(pot, tset, vset, cfg, out, args, splits["test"], start)
        return
    result = fit(pot, tset, vset, cfg, run_dir=out,
                 callback=lambda r: print(f"epoch {r['epoch']:4d} loss {r['train_loss']:.4g} "
                                          f"val E {r['val_energy_mae']:.2f} meV/atom "
                                          f"F {r['val_force_mae']:.4f} eV/Å", flush=True))
    ev = evaluate(pot, splits["test"])
    m = metrics(ev)
    groups = breakdown(ev, "group")
    (out / "test_metrics.json").write_text(json.dumps({"all": m, **groups}, indent=2))
    print(f"\n| {args.element} {args.mode} | {len(train)} | {args.epochs} | "
          f"{m['energy_mae']:.2f} | {m['energy_rmse']:.2f} | {m['force_mae']:.4f} | "
          f"{m['force_rmse']:.4f} | {result.seconds / 60:.1f} min (this call "
          f"{(time.perf_counter() - start) / 60:.1f}) |")
    for g, gm in groups.items():
        print(f"  {g:>10}: E MAE {gm['energy_mae']:.2f} meV/atom, F MAE {gm['force_mae']:.4f}")


def _chain(pot, tset, vset, cfg, out, args, test, start) -> None:
    """Train the stage chain of `args.stages`, then read the test set once."""
    from congener.training.stages import read_stages, train_stages

    stages, metric, patience = read_stages(args.stages, cfg)
    result = train_stages(pot, tset, vset, stages, out, metric=metric, patience=patience,
                          on_stage=lambda k, r: print(
                              f"stage {k}: {r['epochs']} epochs, val E {r['val_energy_mae']:.2f}"
                              f" meV/atom F {r['val_force_mae']:.4f} eV/Å", flush=True))
    ev = evaluate(pot, test)
    m = metrics(ev)
    (out / "test_metrics.json").write_text(json.dumps(
        {"all": m, **breakdown(ev, "group"), "chosen_stage": result.chosen,
         "stages_run": len(result.stages), "metric": metric}, indent=2))
    print(f"\nchosen on validation ({metric}): stage {result.chosen} of {len(result.stages)} "
          f"run ({result.stopped_by})")
    print(f"| {args.element} chain | {len(tset)} | stage {result.chosen} | "
          f"{m['energy_mae']:.2f} | {m['energy_rmse']:.2f} | {m['force_mae']:.4f} | "
          f"{m['force_rmse']:.4f} | {(time.perf_counter() - start) / 60:.1f} min this call |")


if __name__ == "__main__":
    main()
