"""Test errors of a potential: energy (meV/atom), force (eV/Å per component), stress (GPa),
overall and broken down by group or temperature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.units import GPa

from congener.errors import DataError
from congener.models.potential import Potential
from congener.training.data import LabelledSet, predictions


@dataclass
class Evaluation:
    """Per-structure and per-atom errors of one potential on one data set.

    energy_error [S] eV/atom (pred - ref), force_error [N,3] eV/Å, stress_error [S,3,3] GPa
    (NaN where a structure carries no stress), atom_structure [N] structure index per atom,
    groups [S], temperatures [S] (NaN when unknown), e_ref/e_pred [S] eV/atom,
    f_ref/f_pred [N,3] eV/Å (for parity plots). A structure whose predicted energy or any
    predicted force is not finite (e.g. two overlapping atoms) is left out of `metrics`;
    `finite` tells which.
    """

    energy_error: np.ndarray
    force_error: np.ndarray
    stress_error: np.ndarray
    atom_structure: np.ndarray
    groups: list[str]
    temperatures: np.ndarray
    e_ref: np.ndarray
    e_pred: np.ndarray
    f_ref: np.ndarray
    f_pred: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        """[S] bool: True where the structure's energy error and every force error is
        finite."""
        ok = np.isfinite(self.energy_error)
        ok[self.atom_structure[~np.isfinite(self.force_error).all(axis=1)]] = False
        return ok


def evaluate(potential: Potential, structures: Sequence[Atoms] | LabelledSet, *,
             batch_size: int = 8) -> Evaluation:
    """Predict all structures and collect errors against their reference labels."""
    data = structures if isinstance(structures, LabelledSet) else LabelledSet(
        structures, potential.cutoff, name="evaluation data")
    e_pred, f_pred, s_pred = [], [], []
    for _, out in predictions(potential, data, batch_size=batch_size, stress=True):
        e_pred.append(out.energy.cpu().numpy())
        f_pred.append(out.forces.detach().cpu().double().numpy())
        s_pred.append(out.stress.detach().cpu().double().numpy() if out.stress is not None
                      else np.full((len(out.energy), 3, 3), np.nan))
    n = data.n_atoms.numpy()
    e_ref = data.energy.numpy() / n
    e_hat = np.concatenate(e_pred) / n
    f_ref = torch.cat(data.forces).numpy()
    f_hat = np.concatenate(f_pred)
    s_err = (np.concatenate(s_pred) - data.stress.numpy()) / GPa
    s_err[~data.has_stress.numpy()] = np.nan
    return Evaluation(
        energy_error=e_hat - e_ref, force_error=f_hat - f_ref, stress_error=s_err,
        atom_structure=np.repeat(np.arange(len(n)), n),
        groups=[str(a.info.get("group", "all")) for a in data.structures],
        temperatures=np.array([float(a.info.get("temperature", np.nan))
                               for a in data.structures]),
        e_ref=e_ref, e_pred=e_hat, f_ref=f_ref, f_pred=f_hat)


def metrics(ev: Evaluation, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE and RMSE: energy (meV/atom), force (eV/Å per component), stress (GPa per component),
    and the energy bias: the mean signed per-atom error (prediction - reference, meV/atom).

    `mask` [S] selects structures. A bias per group or temperature that is not small next to
    that group's MAE is systematic: the model shifts that family as a whole.
    Structures with non-finite predictions (`Evaluation.finite`) are left out: "n" counts
    the structures in the means, "n_nonfinite" those left out (NaN means if none is left).
    """
    mask = np.ones(len(ev.energy_error), dtype=bool) if mask is None else np.asarray(mask)
    finite = ev.finite
    keep = mask & finite
    de = ev.energy_error[keep] * 1000
    df = ev.force_error[keep[ev.atom_structure]]
    ds = ev.stress_error[keep]
    ds = ds[np.isfinite(ds)]
    def mean(x): return float(np.mean(x)) if x.size else float("nan")
    return {"n": int(keep.sum()), "n_nonfinite": int((mask & ~finite).sum()),
            "energy_mae": mean(np.abs(de)),
            "energy_rmse": mean(de**2) ** 0.5, "energy_bias": mean(de),
            "force_mae": mean(np.abs(df)), "force_rmse": mean(df**2) ** 0.5,
            "stress_mae": mean(np.abs(ds)), "stress_rmse": mean(ds**2) ** 0.5}


def breakdown(ev: Evaluation, by: str = "group") -> dict[str, dict[str, float]]:
    """Metrics per group or per temperature (key 'group' or 'temperature')."""
    if by == "group":
        keys = np.array(ev.groups)
    elif by == "temperature":
        keys = np.array([f"{t:.0f} K" if np.isfinite(t) else "unknown" for t in ev.temperatures])
    else:
        raise ValueError(f"breakdown by 'group' or 'temperature', not {by!r}")
    order = sorted(set(keys.tolist()), key=lambda k: (len(k), k))
    return {k: metrics(ev, keys == k) for k in order}


def force_mae_per_structure(ev: Evaluation) -> np.ndarray:
    """Force MAE of each structure [S] (eV/Å), e.g. for box plots per temperature."""
    sums = np.zeros(len(ev.energy_error))
    np.add.at(sums, ev.atom_structure, np.abs(ev.force_error).mean(1))
    return sums / np.bincount(ev.atom_structure)


def parity_plot(ev: Evaluation, path: str, *, title: str = "") -> str:
    """Energy and force parity plots side by side, saved as PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = metrics(ev)
    keep = ev.finite  # non-finite predictions are left out, as in the metrics
    e_ref, e_pred = ev.e_ref[keep], ev.e_pred[keep]
    f_ref, f_pred = ev.f_ref[keep[ev.atom_structure]], ev.f_pred[keep[ev.atom_structure]]
    if not len(e_ref):
        raise DataError("no structure has finite predictions: nothing to plot")
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(9, 4.2))
    groups = np.array(ev.groups)[keep]
    for g in sorted(set(groups.tolist())):
        ax_e.scatter(e_ref[groups == g], e_pred[groups == g], s=10, label=g)
    lim = [min(e_ref.min(), e_pred.min()), max(e_ref.max(), e_pred.max())]
    ax_e.plot(lim, lim, "k--", lw=0.8)
    ax_e.set(xlabel="reference energy (eV/atom)", ylabel="predicted energy (eV/atom)",
             title=f"energy MAE {m['energy_mae']:.2f} meV/atom")
    ax_e.legend(fontsize=7)
    ax_f.scatter(f_ref.ravel(), f_pred.ravel(), s=2, alpha=0.3)
    lim = [f_ref.min(), f_ref.max()]
    ax_f.plot(lim, lim, "k--", lw=0.8)
    ax_f.set(xlabel="reference force (eV/Å)", ylabel="predicted force (eV/Å)",
             title=f"force MAE {m['force_mae']:.3f} eV/Å")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
