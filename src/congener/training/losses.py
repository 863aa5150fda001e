"""Loss terms: force matching (the paper's Eq. 1), per-atom energy and stress MSE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ase.units import GPa
from torch import Tensor

from congener.models.potential import Prediction
from congener.training.data import Targets


@dataclass
class LossTerms:
    """Weighted total and the unweighted mean-squared terms (for logging)."""

    total: Tensor
    energy_mse: float
    force_mse: float
    stress_mse: float


def loss(pred: Prediction, ref: Targets, *, energy_weight: float, force_weight: float,
         stress_weight: float) -> LossTerms:
    """Weighted sum of per-atom energy MSE (eV/atom)^2, force MSE (eV/Å)^2, stress MSE GPa^2."""
    dtype = pred.forces.dtype
    de = ((pred.energy - ref.energy) / ref.n_atoms).to(dtype)
    e_mse = de.square().mean()
    f_mse = (pred.forces - ref.forces).square().mean()
    total = energy_weight * e_mse + force_weight * f_mse
    s_mse = torch.zeros((), dtype=dtype, device=total.device)
    if stress_weight > 0 and pred.stress is not None and bool(ref.has_stress.any()):
        ds = (pred.stress - ref.stress)[ref.has_stress] / GPa
        s_mse = ds.square().mean()
        total = total + stress_weight * s_mse
    return LossTerms(total, float(e_mse.detach()), float(f_mse.detach()), float(s_mse.detach()))
