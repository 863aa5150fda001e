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
    """Weighted total and the unweighted mean-squared terms (for logging), as device
    scalars: `read()` brings all four to the host at once."""

    total: Tensor
    energy_mse: Tensor
    force_mse: Tensor
    stress_mse: Tensor

    def read(self) -> list[float]:
        """[total, energy_mse, force_mse, stress_mse] as floats, in one host read."""
        return torch.stack([self.total.detach().to(self.energy_mse.dtype), self.energy_mse,
                            self.force_mse, self.stress_mse]).tolist()


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
    return (weight * rows).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


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
    w_atoms = None if w is None else torch.repeat_interleave(
        w, ref.n_atoms, output_size=df.shape[0])  # the size given: no host read
    total = (cfg.energy_weight * se * _term(de, cfg, w)
             + cfg.force_weight * sf * _term(df, cfg, w_atoms))
    s_mse = torch.zeros((), dtype=dtype, device=total.device)
    if cfg.stress_weight > 0 and pred.stress is not None:
        # structures without a stress label weigh zero (a weighted mean, not a selection: no
        # data-dependent size), and a batch with none adds zero
        has = ref.has_stress.to(dtype)
        # zeroed, not only weighted: 0 x a non-finite prediction would still be NaN
        ds = (pred.stress - ref.stress).masked_fill(~ref.has_stress[:, None, None], 0.0) / GPa
        s_mse = (ds.detach().square().mean((1, 2)) * has).sum() / has.sum().clamp_min(1.0)
        w_stress = has if w is None else has * w
        total = total + cfg.stress_weight * ss * _term(ds, cfg, w_stress)
    return LossTerms(total, de.detach().square().mean(), df.detach().square().mean(), s_mse)
