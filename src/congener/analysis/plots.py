"""Figures for the analyses (matplotlib, Agg backend): each function writes one PNG and
returns its path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from congener.analysis.phonons import PhononDOS
from congener.analysis.structure import ExperimentalRDF, StructureStats


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_dos(curves: Mapping[str, PhononDOS], path: str | Path, *,
             reference: tuple[str, PhononDOS] | None = None) -> Path:
    """Overlay of phonon DOS curves (each normalised to unit area), the reference in black."""
    fig, ax = plt.subplots(figsize=(6, 4))
    items = list(curves.items())
    if reference is not None:
        name, dos = reference
        area = np.trapezoid(dos.dos, dos.frequencies_THz)
        ax.fill_between(dos.frequencies_THz, dos.dos / area, color="0.85", label=name)
        ax.plot(dos.frequencies_THz, dos.dos / area, color="k", lw=1.2)
    for name, dos in items:
        area = np.trapezoid(dos.dos, dos.frequencies_THz)
        ax.plot(dos.frequencies_THz, dos.dos / area, lw=1.2, label=name)
    ax.set_xlabel("frequency (THz)")
    ax.set_ylabel("DOS (normalised, 1/THz)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def plot_structure(stats: Mapping[str, StructureStats], path: str | Path, *,
                   experiment: ExperimentalRDF | None = None) -> Path:
    """g(r) and ADF panels, mean ± std bands over trajectories, and the experimental
    first-peak position (with its error) as a marker."""
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in stats.items():
        label = f"{name} (n={s.n_trajectories})"
        (line,) = ax_r.plot(s.r_A, s.g_mean, lw=1.2, label=label)
        ax_r.fill_between(s.r_A, s.g_mean - s.g_std, s.g_mean + s.g_std,
                          color=line.get_color(), alpha=0.25, lw=0)
        ax_a.plot(s.angle_deg, s.adf_mean, lw=1.2, color=line.get_color(), label=label)
        ax_a.fill_between(s.angle_deg, s.adf_mean - s.adf_std, s.adf_mean + s.adf_std,
                          color=line.get_color(), alpha=0.25, lw=0)
    if experiment is not None:
        ax_r.axvspan(experiment.peak_A - experiment.peak_error_A,
                     experiment.peak_A + experiment.peak_error_A, color="k", alpha=0.15)
        ax_r.axvline(experiment.peak_A, color="k", ls="--", lw=1,
                     label=f"experiment {experiment.temperature_K:g} K "
                           f"(peak, n_c = {experiment.coordination:g})")
    ax_r.set_xlabel("r (Å)")
    ax_r.set_ylabel("g(r)")
    ax_r.legend(frameon=False, fontsize=8)
    ax_a.set_xlabel("angle (degrees)")
    ax_a.set_ylabel("ADF (1/degree)")
    ax_a.set_xlim(0, 180)
    return _save(fig, path)
