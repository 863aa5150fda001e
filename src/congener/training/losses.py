"""Loss terms: force matching (the paper's Eq. 1), per-atom energy and stress terms.

Each term is a mean of squared errors (default) or of Huber functions of the errors
(`TrainConfig.loss`: x^2/2 below the threshold, so a weight counts half as much there as with
squared errors). The total (train_loss, val_loss, best-epoch selection) uses the chosen form;
the per-term values logged beside it are always the plain MSEs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ase.units import GPa
from torch import Tensor
from torch.nn import functional as F

from congener.models.potential import Prediction
from congener.training.config import TrainConfig
from congener.training.data import Targets


@dataclass
class LossTerms:
    """Weighted total and the unweighted mean-squared terms (for logging)."""

    total: Tensor
    energy_mse: float
    force_mse: float
    stress_mse: float


def _term(diff: Tensor, cfg: TrainConfig, weight: Tensor | None = None) -> Tensor:
    """Mean squared error or Huber term; with `weight` (one per row of `diff`), the
    weighted mean sum_i w_i l_i / sum_i w_i over rows (components within a row alike)."""
    if cfg.loss == "huber":
        if weight is None:
            return F.huber_loss(diff, torch.zeros_like(diff), delta=cfg.huber_delta)
        elementwise = F.huber_loss(diff, torch.zeros_like(diff), delta=cfg.huber_delta,
                                   reduction="none")
    else:
        if weight is None:
            return diff.square().mean()
        elementwise = diff.square()
    rows = elementwise.reshape(len(elementwise), -1).mean(1)
    return (weight * rows).sum() / weight.sum()


def loss(pred: Prediction, ref: Targets, cfg: TrainConfig,
         shares: tuple[float, float, float] | None = None) -> LossTerms:
    """Weighted sum of the per-atom energy (eV/atom), force (eV/Å per component) and stress
    (GPa) terms of `cfg`: energy_weight, force_weight, stress_weight. Structure weights
    (`ref.weight`) weight each structure's energy and stress and each of its atoms' forces.
    `shares` (energy, force, stress) multiply the three terms: a data-parallel rank scales
    the means over its part of a batch to the batch's (`training.distributed.shares`)."""
    se, sf, ss = shares or (1.0, 1.0, 1.0)
    dtype = pred.forces.dtype
    de = ((pred.energy - ref.energy) / ref.n_atoms).to(dtype)
    df = pred.forces - ref.forces
    w = ref.weight
    w_atoms = None if w is None else torch.repeat_interleave(w, ref.n_atoms)
    total = (cfg.energy_weight * se * _term(de, cfg, w)
             + cfg.force_weight * sf * _term(df, cfg, w_atoms))
    s_mse = torch.zeros((), dtype=dtype, device=total.device)
    if cfg.stress_weight > 0 and pred.stress is not None and bool(ref.has_stress.any()):
        ds = (pred.stress - ref.stress)[ref.has_stress] / GPa
        s_mse = ds.detach().square().mean()
        w_stress = None if w is None else w[ref.has_stress]
        if w_stress is None or bool(w_stress.sum() > 0):
            total = total + cfg.stress_weight * ss * _term(ds, cfg, w_stress)
    return LossTerms(total, float(de.detach().square().mean()),
                     float(df.detach().square().mean()), float(s_mse))
