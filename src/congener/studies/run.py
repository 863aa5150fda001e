"""One run of a study, self-contained so that it can execute in a worker process."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from congener import files
from congener.analysis.errors import breakdown, evaluate, force_mae_per_structure, metrics
from congener.data.structures import elements_of, file_hash_of, read_structures
from congener.errors import ConfigError
from congener.models.checkpoint import (
    build_potential,
    load_potential,
    read_checkpoint,
    save_potential,
)
from congener.models.potential import Potential
from congener.models.registry import load_source
from congener.runtime import set_threads
from congener.studies.arms import Arm
from congener.studies.config import StudyConfig, config_from_dict, spec_from_dict
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.refs import fit_energy_refs
from congener.training.scaling import (
    check_on_validation,
    fit_scales,
    scale_potential,
    stored_scales,
)
from congener.training.trainer import TrainResult, fit
from congener.training.transfer import freeze, lr_scales, map_species, start_from


def source_model_path(cfg: StudyConfig, study_dir: Path) -> Path:
    """Where the source model is (given by the config, or trained into `source/`)."""
    return Path(cfg.source.model) if cfg.source.model else study_dir / "source" / "model.pt"


def check_source_architecture(cfg: StudyConfig) -> None:
    """Refuse a given source model whose DimeNet++ sizes or cutoff differ from the study's
    `model` section: scratch and transfer runs must differ only in how they start."""
    payload = read_checkpoint(cfg.source.model)
    if payload.get("model", "dimenet++") != "dimenet++":
        raise ConfigError(f"source.model {cfg.source.model} is a {payload['model']} model: the "
                          "study's source is a DimeNet++ checkpoint (transfer, frozen, scaled); "
                          "give other families as an arm's start")
    have, want = payload.get("config", {}), asdict(cfg.model)
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
        raise ConfigError(
            f"source model {cfg.source.model} has " + ", ".join(f"{k} {have.get(k)}" for k in diff)
            + " where the study's model section has " + ", ".join(f"{k} {want[k]}" for k in diff)
            + "; give the model section the source's sizes (scratch and transfer runs must "
            "share the architecture)")


def train_source(cfg: StudyConfig, study_dir: Path, callback=None) -> dict[str, Any]:
    """Train the source model on `data/source_*.extxyz` (skipped if already finished)."""
    out = study_dir / "source"
    done = out / "metrics.json"
    if cfg.source.model or done.is_file():
        return json.loads(done.read_text()) if done.is_file() else {}
    train = read_structures(study_dir / "data" / "source_train.extxyz")
    val = read_structures(study_dir / "data" / "source_val.extxyz")
    torch.manual_seed(cfg.source_train.seed)
    potential = build_potential(elements_of(train), cfg.model)
    tset, vset = LabelledSet(train, cfg.model.cutoff), LabelledSet(val, cfg.model.cutoff)
    tcfg = replace(cfg.source_train,
                   val_every=max(1, cfg.source_train.epochs // cfg.budget.validations))
    result = fit(potential, tset, vset, tcfg, run_dir=out, callback=callback,
                 metadata={"mode": "source", "study": cfg.name,
                           "train_data": file_hash_of(study_dir / "data" / "source_train.extxyz")})
    final = metrics(evaluate(potential, vset))  # after the energy-reference refit
    res = {"val": {"val_energy_mae": final["energy_mae"], "val_force_mae": final["force_mae"]},
           "seconds": result.seconds, "epochs": len(result.history), "n_train": len(train)}
    write_json(done, res)
    return res


def _initial_model(cfg: StudyConfig, arm: Arm, study_dir: Path, elements: list[str],
                   seed: int, train: list, run_dir: Path, val: list | None = None
                   ) -> tuple[Potential, dict[str, Any]]:
    """The run's starting model and what was done to it (frozen names, lr scales, scales)."""
    torch.manual_seed(seed)
    if arm.start == "scratch" and arm.cutoff is None:
        return build_potential(elements, cfg.model), {}
    if arm.outside_start:  # a foundation model or a checkpoint, narrowed to the target
        potential = start_from(load_source(arm.start), None, elements)
        return potential, _freezing(potential, arm.freeze, arm.soft_freeze)
    source = load_potential(source_model_path(cfg, study_dir))
    potential = map_species(source, cfg.mapping, seed=seed)
    if arm.start == "frozen":
        soft = arm.soft_freeze if arm.soft_freeze is not None else cfg.soft_freeze
        return potential, _freezing(potential, arm.freeze or cfg.freeze, soft)
    if arm.start == "scaled" or arm.scaled_cutoff:  # fitted to this run's training forces only
        # a resumed run keeps the scales it started from (see `stored_scales`)
        resumed = (run_dir / "last.pt").is_file()
        found = (stored_scales(run_dir / "config.json") if resumed else None) \
            or check_on_validation(potential, fit_scales(potential, train), val)
        length, energy = found.applied
        if arm.start == "scaled":
            return scale_potential(potential, length, energy), {"scales": asdict(found)}
        cutoff = potential.cutoff / length  # a control at the scaled start's cutoff
        start = {"scales": asdict(found), "cutoff": cutoff}
    else:
        cutoff = arm.cutoff or potential.cutoff
        start = {"cutoff": cutoff} if arm.cutoff else {}
    if arm.start == "scratch":
        torch.manual_seed(seed)  # the same initial weights as at the study's cutoff
        return build_potential(elements, replace(cfg.model, cutoff=cutoff)), start
    # transfer at another cutoff: DimeNet++ sees d / cutoff, so this is the source with its
    # distances scaled by cutoff_source / cutoff (no energy scale)
    return scale_potential(potential, potential.cutoff / cutoff, 1.0), start


def _freezing(potential: Potential, parts: tuple[str, ...] | None, soft: float | None
              ) -> dict[str, Any]:
    if not parts:
        return {}
    if soft is not None:
        return {"lr_scales": lr_scales(potential, parts, soft)}
    return {"frozen": freeze(potential, parts)}


def arm_config(tcfg: TrainConfig, arm: Arm) -> TrainConfig:
    """The run's training configuration with the arm's overrides (recipe, references)."""
    refs = arm.refs or ("keep" if arm.zero_shot else None)
    overrides = dict(arm.train)
    if "lr" in overrides and "lr_final" not in overrides:  # the study's decay ratio
        overrides["lr_final"] = overrides["lr"] * tcfg.lr_final / tcfg.lr
    return replace(tcfg, **overrides, **({"refs": refs} if refs else {}))


def run_config(cfg: StudyConfig, size: int, seed: int, lr: float | None, threads: int,
               decay: float | None = None, settings: tuple = ()) -> TrainConfig:
    """The training configuration of one run: the study's base with a size-scaled budget,
    its learning rate, decay (lr_final / lr) and other train settings when chosen by the
    search."""
    bs = cfg.train.batch_size
    lr = lr or cfg.train.lr
    decay = decay or cfg.train.lr_final / cfg.train.lr
    patience = cfg.budget.patience(size, bs) or cfg.train.patience
    return replace(cfg.train, **dict(settings), seed=seed,
                   epochs=cfg.budget.epochs(size, bs), threads=threads, lr=lr,
                   lr_final=lr * decay, patience=patience, val_every=cfg.budget.val_every(size, bs))


def run_one(study_dir: str, cfg_dict: dict[str, Any], spec_dict: dict[str, Any],
            threads: int = 0) -> dict[str, Any]:
    """Train one run, evaluate it on the test set (not a search run: choices are made on
    validation data), write and return its metrics."""
    root = Path(study_dir)
    cfg, spec = config_from_dict(cfg_dict), spec_from_dict(spec_dict)
    run_dir = root / "runs" / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "failed.json").unlink(missing_ok=True)  # a retry of a failed run
    pool = read_structures(root / "data" / "target_pool.extxyz")
    train = [pool[k] for k in spec.train_idx]
    val = [pool[k] for k in spec.val_idx]
    arm = cfg.arm(spec.mode)
    tcfg = arm_config(run_config(cfg, spec.size, spec.seed, spec.lr, threads, spec.decay,
                                 spec.settings), arm)
    set_threads(threads or None)  # the start (a scale fit) runs on the run's share of cores
    potential, start = _initial_model(cfg, arm, root, elements_of(pool), spec.seed, train,
                                      run_dir, val)
    files.write_text(run_dir / "config.json", json.dumps(
        {"run": asdict(spec), "arm": asdict(arm), "train": asdict(tcfg),
         "family": potential.network.family, "model": potential.network.config(),
         "frozen": start.get("frozen", []), "lr_scales": start.get("lr_scales"),
         "scales": start.get("scales")}, indent=2, default=str))
    cutoff = potential.cutoff
    meta = {"mode": str(spec.mode), "arm": asdict(arm), "run": spec.name, "study": cfg.name,
            "train_data": f"{file_hash_of(root / 'data' / 'target_pool.extxyz')}"
                          f" rows {list(spec.train_idx)}"}
    tset, vset = LabelledSet(train, cutoff), LabelledSet(val, cutoff, name="validation set")
    if arm.zero_shot:
        result = _zero_shot(potential, tset, vset, tcfg, run_dir, meta)
    else:
        result = fit(potential, tset, vset, tcfg, run_dir=run_dir,
                     lr_scales=start.get("lr_scales"), metadata=meta)
    res = {"run": asdict(spec) | {"mode": str(spec.mode)},
           "val": result.best_val, "epochs": len(result.history), "seconds": result.seconds,
           "updates": len(result.history) * math.ceil(len(train) / tcfg.batch_size),
           "stopped": _stopped(arm, result, tcfg, cfg),
           "family": potential.network.family}
    if spec.kind != "hpo":  # the test set is read once, after every choice was made
        test = read_structures(root / "data" / "target_test.extxyz")
        ev = evaluate(potential, LabelledSet(test, cutoff, name="test set"))
        res |= {"test": metrics(ev), "by_temperature": breakdown(ev, "temperature"),
                "per_structure_force_mae": force_mae_per_structure(ev).tolist(),
                "temperatures": np.nan_to_num(ev.temperatures, nan=-1).tolist()}
    if arm.start == "scaled":
        res["scales"] = start["scales"]
    elif "cutoff" in start:  # a control: the cutoff it ran at (and the scales behind it)
        res["cutoff"] = start["cutoff"]
        if "scales" in start:
            res["cutoff_from_scales"] = start["scales"]
    write_json(run_dir / "metrics.json", res)
    return res


def _stopped(arm: Arm, result: TrainResult, tcfg: TrainConfig, cfg: StudyConfig) -> str:
    """Why the run ended: zero-shot, patience (converged on validation), cap (the budget's
    ceiling under rule converge: maybe not converged) or budget (rule fixed)."""
    if arm.zero_shot:
        return "zero-shot"
    if result.stopped_early:
        return "patience"
    return "cap" if cfg.budget.rule == "converge" else "budget"


def _zero_shot(potential: Potential, train: LabelledSet, val: LabelledSet, cfg: TrainConfig,
               run_dir: Path, meta: dict[str, Any]) -> TrainResult:
    """A start evaluated as it is: references refitted on the training data only when the arm
    asks (refs refit), validation errors for the record, the model saved as model.pt."""
    from congener.runtime import resolve_device, resolve_dtype

    potential.to(device=resolve_device(cfg.device), dtype=resolve_dtype(cfg.dtype))
    if cfg.refs == "refit":
        fit_energy_refs(potential, train)
    m = metrics(evaluate(potential, val))
    best = {"val_energy_mae": m["energy_mae"], "val_force_mae": m["force_mae"]}
    save_potential(run_dir / "model.pt", potential, {**meta, "zero_shot": True,
                                                     "refs": cfg.refs})
    return TrainResult([], -1, best, potential.get_energy_refs(), 0.0, run_dir)


def write_json(path: Path, data: dict[str, Any], indent: int | None = 2) -> None:
    """Write atomically (`congener.files.atomic_write`): the files that mark finished work
    (metrics.json, cached validation results) are never left half-written by an interrupt, and
    a failed write (a full disk) leaves no temporary behind. NaN is kept (read back as float)."""
    files.write_json(path, data, indent, strict=False)
