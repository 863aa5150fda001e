"""Radial and angular distribution functions of periodic frames (vesin neighbour lists).

g(r): pair histogram normalised by the ideal-gas count, g_k = 2 H_k / (N ρ V_k) with V_k the
exact volume of spherical shell k, averaged over frames. ADF: distribution of the angle
j-i-k between pairs of neighbours j, k of every atom i within `r_cut_A` (the first
coordination shell), a probability density per degree. Statistics over trajectories give
the mean and standard deviation of each curve, of the first-peak position and of the
coordination number n_c = ∫_0^{r_min} 4π ρ r² g(r) dr up to the first minimum r_min.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from vesin import NeighborList

from congener.errors import DataError


@dataclass(frozen=True)
class ExperimentalRDF:
    """Measured first-shell facts of a liquid: peak position and coordination number."""

    peak_A: float
    peak_error_A: float
    coordination: float
    temperature_K: float
    citation: str


LIQUID_GE_1273K = ExperimentalRDF(
    peak_A=2.66, peak_error_A=0.02, coordination=5.6, temperature_K=1273.0,
    citation="P. S. Salmon, 'A neutron diffraction study on the structure of liquid "
             "germanium', J. Phys. F: Met. Phys. 18, 2345 (1988); 1000 °C",
)


@dataclass
class RDF:
    """g(r) on bins of width bin_A: r_A [M] bin centres (Å), g [M], density (atoms/Å³)."""

    r_A: np.ndarray
    g: np.ndarray
    bin_A: float
    density: float


@dataclass
class ADF:
    """Angle distribution: angle_deg [M] bin centres (degrees), p [M] density per degree
    (integrates to 1), r_cut_A the neighbour cutoff (Å)."""

    angle_deg: np.ndarray
    p: np.ndarray
    r_cut_A: float


def _check_frames(frames: Sequence[Atoms]) -> None:
    if not frames:
        raise DataError("no frames to analyse")
    for k, atoms in enumerate(frames):
        if not np.all(atoms.pbc):
            raise DataError(f"frame {k} is not 3D periodic")


def _pairs(atoms: Atoms, cutoff: float, *, full: bool, quantities: str) -> tuple:
    nl = NeighborList(cutoff=float(cutoff), full_list=full)
    return nl.compute(points=np.ascontiguousarray(atoms.positions, dtype=np.float64),
                      box=np.asarray(atoms.cell.array, dtype=np.float64), periodic=True,
                      quantities=quantities)


def rdf(frames: Sequence[Atoms], *, r_max_A: float = 6.0, bin_A: float = 0.02) -> RDF:
    """Radial distribution function averaged over `frames` (all atoms, any elements)."""
    _check_frames(frames)
    edges = np.arange(0.0, r_max_A + 0.5 * bin_A, bin_A)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    gs, densities = [], []
    for atoms in frames:
        (d,) = _pairs(atoms, r_max_A, full=False, quantities="d")
        counts, _ = np.histogram(d, bins=edges)
        n, density = len(atoms), len(atoms) / atoms.get_volume()
        gs.append(2.0 * counts / (n * density * shell))
        densities.append(density)
    return RDF(r_A=0.5 * (edges[1:] + edges[:-1]), g=np.mean(gs, axis=0), bin_A=bin_A,
               density=float(np.mean(densities)))


def bond_angles(atoms: Atoms, r_cut_A: float) -> np.ndarray:
    """All angles j-i-k (degrees) between pairs of neighbours j, k of each atom i closer
    than `r_cut_A` (periodic images included), [A]."""
    i, vec = _pairs(atoms, r_cut_A, full=True, quantities="iD")
    order = np.argsort(i, kind="stable")
    i, vec = i[order], vec[order]
    counts = np.bincount(i, minlength=len(atoms))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    partners = counts[i] - (np.arange(i.size) - start[i]) - 1  # later edges of the same atom
    first = np.repeat(np.arange(i.size), partners)
    offset = np.arange(first.size) - np.repeat(np.cumsum(partners) - partners, partners)
    second = first + 1 + offset
    a, b = vec[first], vec[second]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def adf(frames: Sequence[Atoms], *, r_cut_A: float = 3.0, bin_deg: float = 1.0) -> ADF:
    """Angle distribution within the first shell (r < `r_cut_A`), pooled over `frames`."""
    _check_frames(frames)
    edges = np.linspace(0.0, 180.0, round(180.0 / bin_deg) + 1)
    counts = sum(np.histogram(bond_angles(a, r_cut_A), bins=edges)[0] for a in frames)
    total = counts.sum()
    p = counts / (total * np.diff(edges)) if total else np.zeros(len(edges) - 1)
    return ADF(angle_deg=0.5 * (edges[1:] + edges[:-1]), p=p, r_cut_A=r_cut_A)


def _smooth(y: np.ndarray, half_width: int) -> np.ndarray:
    """Triangular moving average over 2 half_width + 1 bins: a single-bin spike keeps its
    maximum in its own bin, so peak positions of crystals stay exact."""
    if half_width < 1:
        return y
    kernel = np.concatenate([np.arange(1, half_width + 2), np.arange(half_width, 0, -1)])
    return np.convolve(y, kernel / kernel.sum(), mode="same")


def _first_shell(r: RDF, threshold: float, smooth_A: float) -> tuple[np.ndarray, int, int]:
    """Smoothed g and the bin indices of its first peak and first minimum.

    The first peak is the maximum of the first region where g > `threshold`; the first
    minimum is the lowest point between the end of that region and the next rise above
    `threshold` (or, if g never drops below it, up to 1.6 x the peak radius).
    """
    g = _smooth(r.g, round(smooth_A / r.bin_A))
    above = np.flatnonzero(g > threshold)
    if above.size == 0:
        raise DataError(f"g(r) never exceeds {threshold}: no first peak")
    k0 = int(above[0])
    drop = np.flatnonzero(g[k0:] <= threshold)
    k1 = k0 + int(drop[0]) if drop.size else g.size
    k_peak = k0 + int(np.argmax(g[k0:k1]))
    if k1 < g.size:
        rise = np.flatnonzero(g[k1:] > threshold)
        k2 = k1 + int(rise[0]) if rise.size else g.size
    else:
        k1, k2 = k_peak, int(np.searchsorted(r.r_A, 1.6 * r.r_A[k_peak]))
    return g, k_peak, k1 + int(np.argmin(g[k1:max(k2, k1 + 1)]))


def first_peak(r: RDF, *, threshold: float = 1.0, smooth_A: float = 0.1) -> float:
    """Position (Å) of the first maximum of g(r), smoothed over ±`smooth_A`, refined by a
    parabola through the three highest bins."""
    g, k, _ = _first_shell(r, threshold, smooth_A)
    if 0 < k < g.size - 1:
        den = g[k - 1] - 2 * g[k] + g[k + 1]
        if den < 0:
            return float(r.r_A[k] + 0.5 * r.bin_A * (g[k - 1] - g[k + 1]) / den)
    return float(r.r_A[k])


def first_minimum(r: RDF, *, threshold: float = 1.0, smooth_A: float = 0.1) -> float:
    """Position (Å) of the first minimum after the first peak of the smoothed g(r)."""
    _, _, k = _first_shell(r, threshold, smooth_A)
    return float(r.r_A[k])


def coordination_number(r: RDF, r_min_A: float | None = None) -> float:
    """n_c = Σ ρ g_k V_k over bins with centres below `r_min_A` (default: the first
    minimum), i.e. ∫_0^{r_min} 4π ρ r² g(r) dr with exact shell volumes."""
    r_min_A = first_minimum(r) if r_min_A is None else r_min_A
    lo, hi = r.r_A - 0.5 * r.bin_A, r.r_A + 0.5 * r.bin_A
    shell = 4.0 / 3.0 * np.pi * (hi**3 - lo**3)
    mask = r.r_A < r_min_A
    return float(r.density * np.sum(r.g[mask] * shell[mask]))


@dataclass
class StructureStats:
    """Mean ± std over trajectories of g(r), the ADF, the first peak and the coordination.

    r_A [M] Å; g_mean, g_std [M]; angle_deg [K]; adf_mean, adf_std [K] per degree;
    peak_A, coordination: (mean, std); minimum_A: (mean, std) of the first minimum, the
    radius the coordination is integrated to; n_trajectories: how many entered the statistics.
    """

    r_A: np.ndarray
    g_mean: np.ndarray
    g_std: np.ndarray
    angle_deg: np.ndarray
    adf_mean: np.ndarray
    adf_std: np.ndarray
    peak_A: tuple[float, float]
    coordination: tuple[float, float]
    n_trajectories: int
    minimum_A: tuple[float, float] = (float("nan"), float("nan"))


def structure_stats(trajectories: Sequence[Sequence[Atoms]], *, r_max_A: float = 6.0,
                    bin_A: float = 0.02, r_cut_A: float = 3.0, bin_deg: float = 1.0
                    ) -> StructureStats:
    """RDF and ADF of each trajectory (averaged over its frames), then mean and standard
    deviation (ddof=0) over trajectories. Trajectories without frames are skipped."""
    trajectories = [t for t in trajectories if len(t)]
    if not trajectories:
        raise DataError("no trajectory with frames to analyse")
    rdfs = [rdf(t, r_max_A=r_max_A, bin_A=bin_A) for t in trajectories]
    adfs = [adf(t, r_cut_A=r_cut_A, bin_deg=bin_deg) for t in trajectories]
    peaks = [first_peak(r) for r in rdfs]
    minima = [first_minimum(r) for r in rdfs]
    coordination = [coordination_number(r, m) for r, m in zip(rdfs, minima, strict=True)]
    g = np.array([r.g for r in rdfs])
    p = np.array([a.p for a in adfs])
    return StructureStats(
        r_A=rdfs[0].r_A, g_mean=g.mean(0), g_std=g.std(0), angle_deg=adfs[0].angle_deg,
        adf_mean=p.mean(0), adf_std=p.std(0),
        peak_A=(float(np.mean(peaks)), float(np.std(peaks))),
        coordination=(float(np.mean(coordination)), float(np.std(coordination))),
        n_trajectories=len(trajectories),
        minimum_A=(float(np.mean(minima)), float(np.std(minima))))
