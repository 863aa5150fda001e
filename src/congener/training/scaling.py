"""Corresponding-states start for transfer between congeners: stretch and soften the source.

Congeners share their bonding but not its scale: Ge's bonds are longer and weaker than Si's. A
source potential E_src therefore starts the target better as E(r) = mu * E_src(s * r): the
target's structures seen shrunk by the length scale s, its energies multiplied by the energy
scale mu (a law of corresponding states with two constants).

Both are exact operations on DimeNet++, not approximations: the network sees distances only as
d / cutoff (radial and spherical Bessel bases, envelope), so E_src(s * r) is the same network with
cutoff c / s, and its atomic energies are linear in the output blocks' last layers, which mu
multiplies. The target model is an ordinary checkpoint with that cutoff; fine-tuning then moves
every parameter as in plain transfer.

s and mu are fitted to the target's training forces (energies would need the reference
energies first): for a given s the best mu is a least-squares ratio, so only s is searched (a
grid, then a bounded 1-D minimisation around its best point). Written here because it is a
two-parameter fit over a model evaluation, not something a library provides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from scipy import optimize

from congener.errors import ConfigError
from congener.models.dimenet import DimeNetPP
from congener.models.potential import Potential
from congener.training.data import LabelledSet, predictions


@dataclass(frozen=True)
class Scales:
    """Fitted corresponding-states scales and the zero-shot force errors they give.

    length: s (target distances are multiplied by s before the source sees them); energy: mu;
    force_mae_before / after: MAE (eV/Å) of the unscaled and the scaled model's forces on the
    structures used for the fit (no training)."""

    length: float
    energy: float
    force_mae_before: float
    force_mae_after: float
    # the choice checked on validation data (`check_on_validation`): the validation force MAE
    # of the unscaled and the scaled start, and whether the scaled start was kept
    val_force_mae_before: float = float("nan")
    val_force_mae_after: float = float("nan")
    accepted: bool = True

    def describe(self) -> str:
        text = f"length x {self.length:.4f}, energy x {self.energy:.4f}"
        if not math.isnan(self.force_mae_after):
            text += (f" (force MAE before training {self.force_mae_before:.4f} -> "
                     f"{self.force_mae_after:.4f} eV/Å)")
        if not math.isnan(self.val_force_mae_after):
            text += (f"; validation {self.val_force_mae_before:.4f} -> "
                     f"{self.val_force_mae_after:.4f} eV/Å: "
                     + ("scaled start kept" if self.accepted else "unscaled start kept"))
        return text

    @property
    def applied(self) -> tuple[float, float]:
        """(length, energy) to apply: the fitted scales if accepted, else (1, 1)."""
        return (self.length, self.energy) if self.accepted else (1.0, 1.0)


def scale_potential(potential: Potential, length: float = 1.0, energy: float = 1.0
                    ) -> Potential:
    """A copy of `potential` computing energy * E(length * r) (reference energies unchanged).

    The cutoff becomes cutoff / length; the last layer of every output block is multiplied by
    `energy`. Exact for DimeNet++ (distances enter only as d / cutoff)."""
    if not (length > 0 and math.isfinite(length)) or not math.isfinite(energy):
        raise ConfigError(f"scales must be finite, length > 0 (got {length}, {energy})")
    network = potential.network
    if not isinstance(network, DimeNetPP):
        raise ConfigError(f"scaling needs a DimeNet++ network (got {type(network).__name__})")
    param = next(network.parameters())
    new_net = DimeNetPP(replace(network.cfg, cutoff=network.cfg.cutoff / length))
    new_net.to(device=param.device, dtype=param.dtype).load_state_dict(network.state_dict())
    with torch.no_grad():
        for block in new_net.outputs:
            block.lin.weight.mul_(energy)
    for name, p in network.named_parameters():  # keep freezing choices
        new_net.get_parameter(name).requires_grad_(p.requires_grad)
    new = Potential(new_net, potential.elements).to(param.device)
    new.energy_refs.copy_(potential.energy_refs)
    new.metadata = dict(getattr(potential, "metadata", {}) or {})
    return new


def stored_scales(path: Path) -> Scales | None:
    """Scales stored in a JSON file under "scales", or None if the file is absent or holds
    none. A resumed run takes its scales from there: a refit can differ in
    the last digits between machines or thread counts, and the checkpoint belongs to the first
    fit."""
    try:
        return Scales(**json.loads(Path(path).read_text())["scales"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _forces(potential: Potential, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and reference forces [N, 3] (graphs at the potential's own cutoff)."""
    data = LabelledSet(structures, potential.cutoff, name="scale-fit structures")
    pred = [out.forces.cpu().double().numpy() for _, out in predictions(potential, data)]
    return np.concatenate(pred), torch.cat(data.forces).double().numpy()


def check_on_validation(potential: Potential, scales: Scales, structures: Sequence[Atoms]
                        ) -> Scales:
    """Keep a scaled start only where it lowers the force MAE on validation `structures`
    against the unscaled start (a fit to one or a few training structures can choose scales
    that hurt); the record says which start was used (`Scales.accepted`, `applied`)."""
    if not structures:
        return scales
    pred, ref = _forces(potential, structures)
    before = float(np.mean(np.abs(pred - ref)))
    pred, ref = _forces(scale_potential(potential, scales.length, scales.energy), structures)
    after = float(np.mean(np.abs(pred - ref)))
    return replace(scales, val_force_mae_before=before, val_force_mae_after=after,
                   accepted=after < before)


def _fit_energy(potential: Potential, structures: Sequence[Atoms], length: float
                ) -> tuple[float, float, float]:
    """(mu, force MSE, force MAE) of the best energy scale at this length scale."""
    pred, ref = _forces(scale_potential(potential, length), structures)
    mu = float((pred * ref).sum() / max(float((pred * pred).sum()), 1e-30))
    residual = mu * pred - ref
    return mu, float(np.mean(residual ** 2)), float(np.mean(np.abs(residual)))


def fit_scales(potential: Potential, structures: Sequence[Atoms], *,
               bounds: tuple[float, float] = (0.8, 1.25), max_structures: int = 32) -> Scales:
    """The length and energy scales that make `potential` reproduce the forces of
    `structures` best (least squares), before any training.

    `potential` must already know the structures' elements (see `transfer.map_species`). At
    most `max_structures` evenly spaced structures are used. Falls back to (1, 1) if no scale
    pair beats the unscaled model."""
    if not structures:
        raise ConfigError("fit_scales needs at least one structure with forces")
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ConfigError(f"scale bounds must satisfy 0 < low < 1 < high (got {bounds})")
    picks = np.unique(np.linspace(0, len(structures) - 1, min(max_structures, len(structures)))
                      .round().astype(int))
    subset = [structures[k] for k in picks]
    cache: dict[float, tuple[float, float, float]] = {}

    def mse(length: float) -> float:
        if length not in cache:
            cache[length] = _fit_energy(potential, subset, length)
        mu, err, _ = cache[length]
        return err if mu > 0 else math.inf

    grid = np.linspace(lo, hi, max(2, round((hi - lo) / 0.025)) + 1)
    best = min(grid, key=mse)
    step = grid[1] - grid[0]
    res = optimize.minimize_scalar(mse, bounds=(max(lo, best - step), min(hi, best + step)),
                                   method="bounded", options={"xatol": 1e-3})
    length = float(res.x) if res.fun <= mse(best) else float(best)
    pred, ref = _forces(potential, subset)
    diff = pred - ref
    mae_before = float(np.mean(np.abs(diff)))
    if mse(length) >= float(np.mean(diff ** 2)):
        return Scales(1.0, 1.0, mae_before, mae_before)
    mu, _, mae = cache[length]
    return Scales(length, mu, mae_before, mae)
