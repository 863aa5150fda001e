"""One training loop for scratch and transfer runs: Adam, exponential decay, best-on-validation.

A run folder holds `last.pt` (everything needed to resume), `best.pt` (the best model on the
validation set, a loadable potential), `model.pt` (the final potential, energy references
fitted) and `history.csv`. Running `fit` again on the same folder resumes where it stopped.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from congener.errors import CheckpointError, ConfigError, SimulationUnstable, first_line
from congener.files import folder_lock
from congener.graph import Graph
from congener.models.checkpoint import save_atomic, save_potential
from congener.models.potential import Potential
from congener.runtime import resolve_device, resolve_dtype, set_threads, sync_free, tune_allocator
from congener.training import distributed
from congener.training.checks import check_training_data
from congener.training.config import TrainConfig
from congener.training.data import LabelledSet
from congener.training.losses import loss
from congener.training.refs import fit_energy_refs

Callback = Callable[[dict[str, float]], None]


@dataclass
class TrainResult:
    """What a run produced: per-epoch history, the best epoch and its validation errors."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val: dict[str, float]
    energy_refs: dict[str, float]
    seconds: float
    run_dir: Path | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _to_device(potential: Potential, graph: Graph, param: Tensor) -> Graph:
    """`graph` on the parameters' device and dtype; where the model avoids host reads (an
    accelerator), its per-graph layout is made from the host copy first, so that the forward
    pass on the device reads nothing back."""
    moved = graph.to(param.device, param.dtype)
    if sync_free(moved.positions):
        potential.prepare(graph, on=moved)
    return moved


@torch.no_grad()
def validate(potential: Potential, data: LabelledSet, cfg: TrainConfig) -> dict[str, float]:
    """Validation loss and MAEs: energy (meV/atom) and force (eV/Å per component). With
    several data-parallel ranks, each validates every W-th batch and the sums are reduced."""
    param = next(potential.parameters())
    ranks = distributed.current()
    sums = np.zeros(4)  # loss x structures, |dE|/atom, |dF|, force components
    for k, (graph, ref) in enumerate(data.batches(cfg.batch_size)):
        if k % ranks.world != ranks.rank:
            continue
        graph, ref = _to_device(potential, graph, param), ref.to(param.device, param.dtype)
        with torch.enable_grad():
            pred = potential(graph, stress=cfg.stress_weight > 0)
        terms = loss(pred, ref, cfg)
        read = torch.stack([terms.total.detach().to(torch.float64),  # one host read a batch
                            ((pred.energy - ref.energy) / ref.n_atoms).abs().sum(),
                            (pred.forces - ref.forces).abs().sum().to(torch.float64)]).tolist()
        sums += [read[0] * len(ref.energy), read[1], read[2], ref.forces.numel()]
    sums = distributed.all_reduce_sum(sums, ranks, param.device)
    n = len(data)
    return {"val_loss": sums[0] / n, "val_energy_mae": 1000 * sums[1] / n,
            "val_force_mae": sums[2] / max(sums[3], 1)}


def _optimizer(potential: Potential, cfg: TrainConfig, lr_scales: dict[str, float] | None,
               ref_step: torch.nn.Parameter | None = None) -> torch.optim.Optimizer:
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in potential.named_parameters():
        if p.requires_grad:
            groups.setdefault((lr_scales or {}).get(name, 1.0), []).append(p)
    if not groups and ref_step is None:
        raise ConfigError("every parameter is frozen: nothing would be trained; freeze fewer "
                          "parts")
    extra = [] if ref_step is None else [{"params": [ref_step], "lr": cfg.lr, "scale": 1.0}]
    return torch.optim.Adam([{"params": ps, "lr": cfg.lr * s, "scale": s}
                             for s, ps in groups.items()] + extra)


def _ref_step(potential: Potential, cfg: TrainConfig) -> torch.nn.Parameter | None:
    """With refs "train": the reference energies' update of one step, a float64 parameter that
    the loss sees (added to the energies) and that is folded into `energy_refs` after every
    step (`_fold_refs`), so the potential always holds its current references."""
    if cfg.refs != "train":
        return None
    return torch.nn.Parameter(torch.zeros_like(potential.energy_refs))


@torch.no_grad()
def _fold_refs(potential: Potential, ref_step: torch.nn.Parameter,
               ema: AveragedModel | None) -> None:
    allowed = potential.allowed.to(ref_step.device)
    potential.energy_refs.add_(ref_step.masked_fill(~allowed, 0.0))
    ref_step.zero_()
    if ema is not None:  # the moving average keeps buffers as copies: give it the new ones
        ema.module.energy_refs.copy_(potential.energy_refs)


def _set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int,
            step: int | None = None) -> float:
    """Set (and return) the learning rate: exponential decay over the epochs and, given the
    update's index `step`, the linear warm-up over the first `cfg.warmup_steps` updates."""
    lr = cfg.lr * (cfg.lr_final / cfg.lr) ** (epoch / max(cfg.epochs - 1, 1))
    if step is not None:
        lr *= min(1.0, (step + 1) / (cfg.warmup_steps + 1))
    for group in opt.param_groups:
        group["lr"] = lr * group["scale"]
    return lr


def _ema(potential: Potential, cfg: TrainConfig) -> AveragedModel | None:
    """Moving average of the weights (torch's AveragedModel; it starts at the first update)."""
    if not cfg.ema_decay:
        return None
    return AveragedModel(potential, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))


def _train_epoch(potential: Potential, data: LabelledSet, cfg: TrainConfig,
                 opt: torch.optim.Optimizer, rng: np.random.Generator, epoch: int,
                 ema: AveragedModel | None, ref_step: torch.nn.Parameter | None = None,
                 model: torch.nn.Module | None = None,
                 ranks: distributed.Ranks = distributed.SINGLE) -> dict[str, float]:
    """One pass over the training set in the order `rng` draws. `model` is the module that
    runs forward (`potential` or its DistributedDataParallel wrapper); with several `ranks`
    each takes its part of every batch (see `training.distributed`)."""
    param = next(potential.parameters())
    model = model or potential
    sums, count = np.zeros(4), 0
    step = epoch * math.ceil(len(data) / cfg.batch_size)  # updates before this epoch
    order = rng.permutation(len(data)).tolist()
    for start in range(0, len(order), cfg.batch_size):
        indices = order[start:start + cfg.batch_size]
        part = distributed.shard(indices, ranks)
        used = part or indices[:1]  # an empty part still joins the gradient reduction
        graph, ref = data.batch(used)
        graph, ref = _to_device(potential, graph, param), ref.to(param.device, param.dtype)
        if step <= cfg.warmup_steps:  # in the warm-up (its last step restores the schedule)
            _set_lr(opt, cfg, epoch, step)
        step += 1
        opt.zero_grad(set_to_none=True)
        pred = model(graph, stress=cfg.stress_weight > 0, create_graph=True)
        if ref_step is not None:
            step_refs = ref_step.index_select(0, graph.species)
            pred.energy = pred.energy + torch.zeros_like(pred.energy).index_add(
                0, graph.batch, step_refs)
        terms = loss(pred, ref, cfg, distributed.shares(data, indices, part, ranks))
        values = terms.read()  # the step's one host read: the NaN stop and the log
        finite = math.isfinite(values[0])
        if ranks.world > 1:  # every rank stops together
            finite = distributed.all_reduce_sum(np.array([not finite]), ranks,
                                                param.device)[0] == 0
        if not finite:
            raise SimulationUnstable(f"training loss became {values[0]} at epoch "
                                     f"{epoch}{_culprits(pred, data, used)}")
        # Only parameter gradients: skips the unused second derivative w.r.t. positions.
        terms.total.backward(inputs=[p for p in potential.parameters() if p.requires_grad]
                             + ([ref_step] if ref_step is not None else []))
        if ref_step is not None:
            distributed.reduce_gradient(ref_step, ranks)
        if cfg.grad_clip > 0:
            clipped = [*potential.parameters(), *([ref_step] if ref_step is not None else [])]
            torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
        opt.step()
        if ref_step is not None:
            _fold_refs(potential, ref_step, ema)
        if ema is not None:
            ema.update_parameters(potential)
        if ranks.world == 1:
            sums += len(ref.energy) * np.array(values)
        else:  # the ranks' totals add up to W x the batch's loss; the MSEs are logged per part
            sums += [values[0] * len(indices) / ranks.world, *(len(part) * np.array(values[1:]))]
        count += len(indices)
    sums = distributed.all_reduce_sum(sums, ranks, param.device)
    names = ("train_loss", "train_energy_mse", "train_force_mse", "train_stress_mse")
    row = dict(zip(names, sums / count, strict=True))
    if cfg.stress_weight == 0:
        del row["train_stress_mse"]
    return row


def _culprits(pred: Any, data: LabelledSet, indices: list[int]) -> str:
    """Which structures of a batch gave non-finite predictions, with their shortest
    interatomic distance (two atoms on top of each other are the usual cause)."""
    from congener.data.structures import shortest_distance

    energy = pred.energy.detach().cpu().numpy()
    finite_atoms = np.isfinite(pred.forces.detach().cpu().numpy()).all(axis=1)
    starts = np.cumsum([0, *data.n_atoms[indices].tolist()[:-1]])
    bad = ~np.isfinite(energy) | ~np.logical_and.reduceat(finite_atoms, starts)
    names = [f"structure {indices[k]} ({data.structures[indices[k]].get_chemical_formula()}, "
             f"shortest interatomic distance {shortest_distance(data.structures[indices[k]]):.3g}"
             " Å)" for k in np.flatnonzero(bad).tolist()]
    if not names:
        return " (the predictions are finite: the loss overflowed; lower the learning rate)"
    return f": non-finite predictions for {data.name} " + ", ".join(names)


def fit(potential: Potential, train: LabelledSet, val: LabelledSet, cfg: TrainConfig, *,
        run_dir: str | Path | None = None, lr_scales: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None, callback: Callback | None = None) -> TrainResult:
    """Train `potential` in place on `train`, selecting the best epoch on `val`.

    Parameters with requires_grad=False stay untouched (frozen transfer); `lr_scales` maps
    parameter names to learning-rate factors (soft freezing). The energy references follow
    `cfg.refs`: by default fitted by least squares on `train` before training and refitted to
    the kept weights after it (see `_finish`); "train" lets them move with the weights, "keep"
    leaves them. With `run_dir`, checkpoints are written every epoch and an interrupted run
    resumes from them; the folder is locked while the run trains (a second process gets one
    line naming the first).
    """
    check_training_data(potential, train, val, cfg)
    ranks = distributed.init_from_env()  # several ranks when launched by torchrun
    if run_dir is None or not ranks.main:  # rank 0 alone holds the folder and writes to it
        return _fit(potential, train, val, cfg, run_dir and Path(run_dir), lr_scales,
                    metadata, callback if ranks.main else None, ranks)
    with folder_lock(run_dir, f"run folder {run_dir}"):
        return _fit(potential, train, val, cfg, Path(run_dir), lr_scales, metadata, callback,
                    ranks)


def _fit(potential: Potential, train: LabelledSet, val: LabelledSet, cfg: TrainConfig,
         run_dir: Path | None, lr_scales: dict[str, float] | None,
         metadata: dict[str, Any] | None, callback: Callback | None,
         ranks: distributed.Ranks = distributed.SINGLE) -> TrainResult:
    tune_allocator()
    set_threads(cfg.threads or None)
    device = distributed.device_for(ranks, resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype)
    out = run_dir if ranks.main else None  # where files are written (rank 0 only)
    torch.manual_seed(cfg.seed)
    potential.to(device=device, dtype=dtype)
    # Energy mode learns on top of the references; in force-only mode fitting them first makes
    # validation energies meaningful. Both modes refit them after training (`_finish`).
    if cfg.refs != "keep":
        fit_energy_refs(potential, train)
    ref_step = _ref_step(potential, cfg)
    opt = _optimizer(potential, cfg, lr_scales, ref_step)
    ema = _ema(potential, cfg)
    # the weights that are validated and kept: the moving average when there is one
    kept = potential if ema is None else ema.module
    rng = np.random.default_rng(cfg.seed)
    state = {"epoch": 0, "history": [], "best_val": math.inf, "best_epoch": -1, "seconds": 0.0}
    identity = run_identity(potential, train, val, lr_scales) if run_dir else {}
    if run_dir and (run_dir / "last.pt").exists():
        state, rng = _resume(run_dir / "last.pt", potential, opt, cfg, ema, identity)
    best_state = {k: v.detach().clone() for k, v in potential.state_dict().items()}
    if run_dir and state["best_epoch"] >= 0:
        best_state = _load_best_state(run_dir)
    model = distributed.wrap(potential, ranks)
    start = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], cfg.epochs):
        if state.get("stopped"):  # an early-stopped run that is rerun stays stopped
            break
        potential.train()
        lr = _set_lr(opt, cfg, epoch)
        try:
            epoch_terms = _train_epoch(potential, train, cfg, opt, rng, epoch, ema, ref_step,
                                       model, ranks)
        except SimulationUnstable as exc:
            _stop_unstable(exc, potential, train, cfg, best_state, state, out, metadata)
        row = {"epoch": epoch, "lr": lr, **epoch_terms}
        checked = (epoch + 1) % cfg.val_every == 0 or epoch == cfg.epochs - 1
        nan = float("nan")
        row.update(validate(kept, val, cfg) if checked else
                   {"val_loss": nan, "val_energy_mae": nan, "val_force_mae": nan})
        row["seconds"] = time.perf_counter() - start
        state["history"].append(row)
        improved = checked and row["val_loss"] < state["best_val"]
        if improved:
            state.update(best_val=row["val_loss"], best_epoch=epoch)
            best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
            if out:
                save_atomic(best_state, out / "best_state.pt")
        # early stopping counts epochs since the best one (validated every val_every epochs)
        stale = checked and epoch - state["best_epoch"] >= cfg.patience
        state.update(epoch=epoch + 1, seconds=row["seconds"], stopped=bool(cfg.patience and stale))
        if out:
            _checkpoint(out, potential, opt, cfg, state, rng, metadata, improved, ema,
                        identity)
        if callback:
            callback(row)
    return _finish(potential, train, cfg, best_state, state, out, metadata,
                   time.perf_counter() - start)


def _finish(potential: Potential, train: LabelledSet, cfg: TrainConfig, best_state: dict,
            state: dict, run_dir: Path | None, metadata: dict[str, Any] | None, seconds: float,
            note: str | None = None) -> TrainResult:
    """Load the best weights, refit the energy references to them (refs "refit"; "train"
    keeps the best epoch's, "keep" the starting values), write model.pt.

    Force-only training leaves the energy constant free (the paper fits it afterwards). With an
    energy term the network still keeps a mean per-atom offset on its own training data (the
    term weighs little beside the forces: 1-3 meV/atom on the Zuo et al. Ge data at 195
    structures), and the least-squares refit is the best constant for that term: it cannot
    raise the per-atom energy MSE on the training data (BENCHMARKS.md, "Energy references
    refitted after training").
    """
    potential.load_state_dict(best_state)
    if cfg.refs == "refit":
        fit_energy_refs(potential, train)
    best_row = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    result = TrainResult(state["history"], state["best_epoch"], best_row,
                         potential.get_energy_refs(), seconds, run_dir,
                         bool(state.get("stopped")))
    if run_dir:
        meta = {**(metadata or {}), "train_config": asdict(cfg), "best_epoch": result.best_epoch}
        save_potential(run_dir / "model.pt", potential, meta | ({"note": note} if note else {}))
    return result


def _stop_unstable(exc: SimulationUnstable, potential: Potential, train: LabelledSet,
                   cfg: TrainConfig, best_state: dict, state: dict, run_dir: Path | None,
                   metadata: dict[str, Any] | None) -> None:
    """A non-finite loss: keep the best weights so far (in memory and as model.pt), then raise."""
    if state["best_epoch"] < 0:
        potential.load_state_dict(best_state)
        where = (f"; {run_dir / 'last.pt'} holds the state before the failure"
                 if run_dir and (run_dir / "last.pt").is_file() else "")
        raise SimulationUnstable(f"{exc}, before any validated epoch; the starting weights are "
                                 f"restored{where}") from exc
    _finish(potential, train, cfg, best_state, state, run_dir, metadata, state["seconds"],
            note=f"stopped: {exc}")
    kept = f"; saved as {run_dir / 'model.pt'}" if run_dir else ""
    raise SimulationUnstable(f"{exc}; the best model so far (epoch {state['best_epoch']}) is "
                             f"kept{kept}") from exc


def _load_best_state(run_dir: Path) -> dict:
    """The best weights so far: `best_state.pt`, or the same weights in `best.pt` when that
    file is unreadable (cut off by a full disk or a copy)."""
    errors = []
    for name in ("best_state.pt", "best.pt"):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, weights_only=True)
            return payload["state_dict"] if name == "best.pt" else payload
        except Exception as exc:
            errors.append(f"{name}: {first_line(exc, 100)}")
    raise CheckpointError(f"cannot read the best weights of {run_dir} ({'; '.join(errors)}); "
                          "delete best_state.pt and best.pt to continue from last.pt (the best "
                          "epoch is then chosen among the epochs still to come), or the run "
                          "folder to start over")


def _checkpoint(run_dir: Path, potential: Potential, opt: torch.optim.Optimizer,
                cfg: TrainConfig, state: dict, rng: np.random.Generator,
                metadata: dict[str, Any] | None, improved: bool, ema: AveragedModel | None,
                identity: dict[str, Any]) -> None:
    if improved:
        note = "best epoch during training; energy references not yet refitted to it"
        save_potential(run_dir / "best.pt", potential if ema is None else ema.module,
                       {**(metadata or {}), "train_config": asdict(cfg),
                        "best_epoch": state["best_epoch"], "note": note})
    payload = {"state": state, "config": asdict(cfg), "identity": identity,
               "model": potential.state_dict(),
               "optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
               "ema": None if ema is None else ema.state_dict()}
    save_atomic(payload, run_dir / "last.pt")
    _write_history(run_dir / "history.csv", state["history"])


def run_identity(potential: Potential, train: LabelledSet, val: LabelledSet,
                 lr_scales: dict[str, float] | None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoint, besides the
    training configuration: the model's settings and elements, the data, and which parameters
    are frozen or soft-frozen. (Where the starting weights came from does not matter: a resumed
    run continues from the checkpoint's.)"""
    network = potential.network  # DimeNet++'s config() is asdict(cfg): older identities match
    family = {} if network.family == "dimenet++" else {"family": network.family}
    return {"model": {**network.config(), **family},
            "elements": list(potential.elements),
            "training data": train.fingerprint(), "validation data": val.fingerprint(),
            "frozen": sorted(n for n, p in potential.named_parameters() if not p.requires_grad),
            "lr_scales": dict(sorted((lr_scales or {}).items()))}


_IDENTITY_NAMES = {"model": "model settings", "elements": "elements",
                   "training data": "training data", "validation data": "validation data",
                   "frozen": "frozen parameters", "lr_scales": "soft-frozen parameters"}


def _same(a: Any, b: Any) -> bool:
    """Equal; numbers to 1e-9 relative (a cutoff divided by a fitted length scale may differ in
    the last bits between machines)."""
    if type(a) is float or type(b) is float:
        return isinstance(a, int | float) and isinstance(b, int | float) \
            and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _identity_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two run identities, in words (None if nothing)."""
    for key, name in _IDENTITY_NAMES.items():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key == "model":
            changed = [k for k in sorted(set(a) | set(b)) if not _same(a.get(k), b.get(k))]
            if changed:
                return f"{name} ({', '.join(changed)})"
        elif not _same(a, b):
            return name
    return None


def _cannot_resume(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"cannot resume from {path}: {first_line(exc, 160)}; "
                           "delete the run folder to start over")


def _resume(path: Path, potential: Potential, opt: torch.optim.Optimizer, cfg: TrainConfig,
            ema: AveragedModel | None, identity: dict[str, Any]
            ) -> tuple[dict, np.random.Generator]:
    try:
        payload = torch.load(path, weights_only=False)
    except Exception as exc:
        raise _cannot_resume(path, exc) from exc
    # Where the run executes (threads, device) may change between sessions; what it learns may not.
    ignore = {"threads", "device"}
    # settings added in later versions take their defaults
    old = {k: v for k, v in (asdict(TrainConfig()) | payload["config"]).items()
           if k not in ignore}
    if old != {k: v for k, v in asdict(cfg).items() if k not in ignore}:
        raise CheckpointError(f"{path} was written with another training configuration; "
                              "use a new run folder or the same configuration")
    # (checkpoints written before the identity was recorded have the configuration check only)
    differs = _identity_change(payload.get("identity") or identity, identity)
    if differs is not None:
        raise CheckpointError(f"{path} was written by a run with other {differs}; use a new "
                              "run folder, or the same model, data and options")
    try:
        potential.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        if ema is not None and payload.get("ema") is not None:
            ema.load_state_dict(payload["ema"])
    except Exception as exc:
        raise _cannot_resume(path, exc) from exc
    rng = np.random.default_rng()
    rng.bit_generator.state = payload["rng"]
    return payload["state"], rng


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
